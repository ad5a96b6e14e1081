//! HTTP File Upload (XEP-0363), the part both sides share without I/O: the `upload` service
//! (canto-modules) hands out signed slots, the HTTP server (canto-net) checks them on PUT and
//! serves the files on GET. Here: the slot token (its format, HMAC-SHA256 signature and
//! verification), the store names, the records, the on-disk layout, filename and content-type
//! rules, `Content-Disposition` (RFC 6266) and `Range` (RFC 9110 §14) parsing. docs/upload.md
//! is the behaviour contract.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

/// The XEP-0363 namespace (XEP-0363 §1).
pub const NS: &str = "urn:xmpp:http:upload:0";

/// The module's configuration section (`[upload]`).
pub const SECTION: &str = "upload";
/// The key-value store of each service's signing secret (host: the service domain, user: "").
pub const SECRET_STORE: &str = "upload_secret";
/// The map store of slots and files: host the service domain, user the owner's bare JID, key
/// the slot id, value a [`Record`]. Under the service's domain, so it survives the deletion of
/// the owner's own stores until the module's account-deletion hook has removed the files.
pub const RECORD_STORE: &str = "upload_files";

/// `[upload] path` by default: under `data_dir`.
pub const DEFAULT_PATH: &str = "upload";
/// `[upload] max_concurrent_uploads` by default.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// `[upload] min_upload_rate` by default, bytes per second.
pub const DEFAULT_MIN_RATE: u64 = 16 * 1024;
/// `[upload] expire_days` by default (Prosody's mod_http_file_share).
pub const DEFAULT_EXPIRE_DAYS: u64 = 7;
/// The longest filename accepted, bytes.
pub const MAX_FILENAME_BYTES: usize = 255;
/// The longest content type accepted, bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// The content type of a file whose request named none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A slot: what the service promised one requester, and what the PUT must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The service's domain (which secret signs it).
    pub service: String,
    /// The slot id: 32 lowercase hex digits ([`valid_id`]).
    pub id: String,
    /// The file's name as requested.
    pub filename: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its content type, if the request named one (XEP-0363 §4: optional).
    pub content_type: Option<String>,
    /// Until when (Unix seconds) the PUT may start.
    pub expires: u64,
    /// The requester's bare JID.
    pub requester: String,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of ours.
    Malformed,
    /// The signature does not match.
    BadSignature,
}

const TOKEN_VERSION: &str = "c1";

/// Length-prefixed fields (`<len>:<bytes>`): unambiguous whatever the fields contain.
fn encode_fields(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(f.as_bytes());
    }
    out
}

fn decode_fields(mut data: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let colon = data.iter().position(|b| *b == b':')?;
        if colon == 0 || colon > 10 {
            return None;
        }
        let len: usize = std::str::from_utf8(&data[..colon]).ok()?.parse().ok()?;
        let rest = &data[colon + 1..];
        if rest.len() < len {
            return None;
        }
        out.push(String::from_utf8(rest[..len].to_vec()).ok()?);
        data = &rest[len..];
    }
    Some(out)
}

fn mac(secret: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    // HMAC takes keys of any length (RFC 2104 §2): new_from_slice cannot fail; an empty key
    // stands in for the impossible case rather than a panic.
    <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| {
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[0u8; 32])
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"))
    })
}

impl Slot {
    fn payload(&self) -> Vec<u8> {
        let size = self.size.to_string();
        let expires = self.expires.to_string();
        let ct = self.content_type.as_deref().unwrap_or("");
        let has_ct = if self.content_type.is_some() {
            "1"
        } else {
            "0"
        };
        encode_fields(&[
            TOKEN_VERSION,
            &self.service,
            &self.id,
            &self.filename,
            &size,
            has_ct,
            ct,
            &expires,
            &self.requester,
        ])
    }

    /// The token for the `Authorization` header (as `Bearer TOKEN`): the slot's fields and
    /// their HMAC-SHA256 under `secret`, each base64url, joined by a dot.
    pub fn token(&self, secret: &[u8]) -> String {
        let payload = self.payload();
        let mut m = mac(secret);
        m.update(&payload);
        let sig = m.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    /// Reads a token's fields without checking the signature (the service named in it says
    /// which secret to check it with: [`Slot::verify`]).
    pub fn parse_unverified(token: &str) -> Result<Slot, TokenError> {
        let (payload, _) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let f = decode_fields(&bytes).ok_or(TokenError::Malformed)?;
        let [
            v,
            service,
            id,
            filename,
            size,
            has_ct,
            ct,
            expires,
            requester,
        ] = <[String; 9]>::try_from(f).map_err(|_| TokenError::Malformed)?;
        if v != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        Ok(Slot {
            service,
            id,
            filename,
            size: size.parse().map_err(|_| TokenError::Malformed)?,
            content_type: (has_ct == "1").then_some(ct),
            expires: expires.parse().map_err(|_| TokenError::Malformed)?,
            requester,
        })
    }

    /// Checks `token`'s signature under `secret` (in constant time) and returns its slot.
    pub fn verify(token: &str, secret: &[u8]) -> Result<Slot, TokenError> {
        let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut m = mac(secret);
        m.update(&bytes);
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        Slot::parse_unverified(token)
    }
}

/// A new slot id: 128 random bits, 32 lowercase hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the form of [`new_id`] (so it is safe as a path component).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a filename is refused (XEP-0363 §4: the server may refuse a name; we answer bad-request).
pub fn check_filename(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty filename");
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err("filename too long");
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err("filename contains \"..\"");
    }
    if name.contains(['/', '\\']) {
        return Err("filename contains a path separator");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("filename contains control characters");
    }
    Ok(())
}

/// A content type as `type/subtype` with optional parameters, printable ASCII, lowercased
/// type; None if it is not one.
pub fn normalize_content_type(ct: &str) -> Option<String> {
    let ct = ct.trim();
    if ct.is_empty()
        || ct.len() > MAX_CONTENT_TYPE_BYTES
        || !ct.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let (essence, params) = match ct.split_once(';') {
        Some((e, p)) => (e.trim(), Some(p.trim())),
        None => (ct, None),
    };
    let (t, s) = essence.split_once('/')?;
    let token = |x: &str| {
        !x.is_empty()
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    if !token(t) || !token(s) {
        return None;
    }
    let essence = essence.to_ascii_lowercase();
    Some(match params {
        Some(p) if !p.is_empty() => format!("{essence}; {p}"),
        _ => essence,
    })
}

/// The `type/subtype` part of a content type, lowercased.
pub fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `ct` matches one of `allowed` (`image/png`, or `image/*`); an empty list allows all.
pub fn type_allowed(ct: &str, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let e = essence(ct);
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix("/*") {
            Some(major) => e.split('/').next() == Some(major),
            None => a == e,
        }
    })
}

/// `Content-Disposition` for a served file (RFC 6266 §4): `inline` for images (SVG excepted: it
/// can carry script), audio and video, `attachment` otherwise; the name as an ASCII fallback
/// `filename` and the exact one as RFC 8187 `filename*`.
pub fn content_disposition(filename: &str, content_type: &str) -> String {
    let e = essence(content_type);
    let inline = (e.starts_with("image/") && e != "image/svg+xml")
        || e.starts_with("audio/")
        || e.starts_with("video/");
    let kind = if inline { "inline" } else { "attachment" };
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in filename.bytes() {
        // RFC 8187 §3.2.1 attr-char.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// A path segment percent-encoded (RFC 3986 §3.3: unreserved characters stay), for the URLs.
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The answer to a `Range` header (RFC 9110 §14.2) for a file of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No range, or one we ignore (several ranges, other units, malformed): the whole file.
    Full,
    /// Bytes `start..=end`.
    Partial(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses a single byte range: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Multiple ranges and
/// malformed headers are ignored (the whole file is sent), as RFC 9110 §14.2 allows.
pub fn parse_range(header: &str, len: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeAnswer::Full,
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial(len.saturating_sub(n), len - 1),
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(e) => Some(e),
                    None => return RangeAnswer::Full,
                }
            };
            if let Some(e) = end
                && e < start
            {
                return RangeAnswer::Full;
            }
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            RangeAnswer::Partial(start, end)
        }
    }
}

/// What the service keeps per slot (in [`RECORD_STORE`]): its size and whether the file is in
/// place; pending slots count against the quota until they expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A slot handed out, not (yet) used: counts until `expires` (Unix seconds).
    Pending {
        /// Bytes promised.
        size: u64,
        /// When the slot expires.
        expires: u64,
    },
    /// A file in place, stored at `stored` (Unix seconds).
    Stored {
        /// Bytes.
        size: u64,
        /// When the PUT completed.
        stored: u64,
    },
}

impl Record {
    /// `pending SIZE EXPIRES` or `stored SIZE STORED`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Pending { size, expires } => format!("pending {size} {expires}"),
            Record::Stored { size, stored } => format!("stored {size} {stored}"),
        }
        .into_bytes()
    }

    /// The inverse of [`Record::encode`].
    pub fn decode(b: &[u8]) -> Option<Record> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.split(' ');
        let (kind, size, t) = (
            it.next()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        );
        match kind {
            "pending" => Some(Record::Pending { size, expires: t }),
            "stored" => Some(Record::Stored { size, stored: t }),
            _ => None,
        }
    }

    /// Bytes this record counts against the quota at `now`.
    pub fn counted(&self, now: u64) -> u64 {
        match *self {
            Record::Pending { size, expires } if expires > now => size,
            Record::Pending { .. } => 0,
            Record::Stored { size, .. } => size,
        }
    }
}

/// A stored file's description, next to it on disk (`meta`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The service that handed out the slot.
    pub service: String,
    /// The uploader's bare JID.
    pub owner: String,
    /// The file's name.
    pub filename: String,
    /// Its content type (as signed, else [`DEFAULT_CONTENT_TYPE`]).
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// When the upload completed (Unix seconds).
    pub stored: u64,
}

impl Meta {
    /// Length-prefixed fields (see [`encode_fields`]).
    pub fn encode(&self) -> Vec<u8> {
        encode_fields(&[
            "m1",
            &self.service,
            &self.owner,
            &self.filename,
            &self.content_type,
            &self.size.to_string(),
            &self.stored.to_string(),
        ])
    }

    /// The inverse of [`Meta::encode`].
    pub fn decode(b: &[u8]) -> Option<Meta> {
        let f = decode_fields(b)?;
        let [v, service, owner, filename, content_type, size, stored] =
            <[String; 7]>::try_from(f).ok()?;
        (v == "m1").then_some(())?;
        Some(Meta {
            service,
            owner,
            filename,
            content_type,
            size: size.parse().ok()?,
            stored: stored.parse().ok()?,
        })
    }
}

/// The on-disk layout under the upload root (`data_dir/[upload] path`): one directory per slot,
/// `ROOT/ID/`, holding `data` (the file, renamed into place when complete), `meta` ([`Meta`])
/// and while a PUT runs `data.part`.
pub fn root(data_dir: &Path, path: &str) -> PathBuf {
    data_dir.join(path)
}

/// `ROOT/ID`.
pub fn slot_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The file's name in its slot directory.
pub const DATA_FILE: &str = "data";
/// The file while it is being written.
pub const PART_FILE: &str = "data.part";
/// The description.
pub const META_FILE: &str = "meta";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            service: "upload.example".into(),
            id: new_id(),
            filename: "päper 1.pdf".into(),
            size: 1234,
            content_type: Some("application/pdf".into()),
            expires: 2_000_000_000,
            requester: "alice@example".into(),
        }
    }

    #[test]
    fn tokens_verify_only_with_their_secret_and_unchanged() {
        let s = slot();
        let t = s.token(b"secret");
        assert_eq!(Slot::verify(&t, b"secret"), Ok(s.clone()));
        assert_eq!(Slot::verify(&t, b"other"), Err(TokenError::BadSignature));
        assert_eq!(Slot::parse_unverified(&t), Ok(s.clone()));
        // Changing any field breaks the signature.
        let mut bigger = s.clone();
        bigger.size += 1;
        let forged = format!(
            "{}.{}",
            bigger.token(b"x").split('.').next().unwrap_or(""),
            t.split('.').nth(1).unwrap_or("")
        );
        assert_eq!(
            Slot::verify(&forged, b"secret"),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            Slot::verify("garbage", b"secret"),
            Err(TokenError::Malformed)
        );
        assert_eq!(Slot::verify("a.b.c", b"secret"), Err(TokenError::Malformed));
        // No content type and an empty one differ.
        let mut none = s.clone();
        none.content_type = None;
        assert_eq!(Slot::verify(&none.token(b"k"), b"k"), Ok(none));
    }

    #[test]
    fn ids_and_filenames() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../etc/passwd"));
        assert!(!valid_id(&id.to_uppercase()));
        assert!(check_filename("report.pdf").is_ok());
        assert!(check_filename("résumé (1).txt").is_ok());
        for bad in ["", "a/b", "..", "a..b", "a\\b", "a\nb", "a\u{7f}"] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
        assert!(check_filename(&"x".repeat(256)).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            normalize_content_type("Image/PNG").as_deref(),
            Some("image/png")
        );
        assert_eq!(
            normalize_content_type("text/plain; charset=utf-8").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(normalize_content_type("nonsense"), None);
        assert_eq!(normalize_content_type("a/b\r\nX: y"), None);
        assert!(type_allowed("image/png", &["image/*".into()]));
        assert!(!type_allowed(
            "text/html",
            &["image/*".into(), "audio/ogg".into()]
        ));
        assert!(type_allowed("text/html", &[]));
    }

    #[test]
    fn disposition_is_inline_for_media_only_and_escapes_the_name() {
        assert_eq!(
            content_disposition("a.png", "image/png"),
            "inline; filename=\"a.png\"; filename*=UTF-8''a.png"
        );
        assert!(content_disposition("a.svg", "image/svg+xml").starts_with("attachment"));
        assert!(content_disposition("a.html", "text/html").starts_with("attachment"));
        assert_eq!(
            content_disposition("x\"é.txt", "text/plain"),
            "attachment; filename=\"x__.txt\"; filename*=UTF-8''x%22%C3%A9.txt"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAnswer::Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeAnswer::Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeAnswer::Partial(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeAnswer::Partial(0, 99));
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeAnswer::Partial(50, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAnswer::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeAnswer::Full);
        assert_eq!(parse_range("bytes=9-1", 100), RangeAnswer::Full);
        assert_eq!(parse_range("bytes=x-1", 100), RangeAnswer::Full);
    }

    #[test]
    fn records_and_meta_round_trip() {
        let p = Record::Pending {
            size: 5,
            expires: 10,
        };
        assert_eq!(Record::decode(&p.encode()), Some(p));
        assert_eq!(p.counted(9), 5);
        assert_eq!(p.counted(10), 0);
        let s = Record::Stored { size: 7, stored: 1 };
        assert_eq!(Record::decode(&s.encode()), Some(s));
        assert_eq!(s.counted(u64::MAX), 7);
        let m = Meta {
            service: "upload.example".into(),
            owner: "alice@example".into(),
            filename: "a:b 12:c".into(),
            content_type: "text/plain".into(),
            size: 3,
            stored: 99,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        assert_eq!(Meta::decode(b"3:abc"), None);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("a b/é.txt"), "a%20b%2F%C3%A9.txt");
    }
}

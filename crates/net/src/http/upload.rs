//! XEP-0363 file transfer over HTTP at `/upload/{id}/{name}`: the PUT into a slot the `upload`
//! service (canto-modules) handed out, and GET / HEAD of the stored file. The slot token, the
//! records and the on-disk layout are `canto_proto::upload`'s; docs/upload.md is the contract.
//!
//! PUT (XEP-0363 §5): the `Authorization: Bearer TOKEN` the slot carried must verify under the
//! service's secret (else 403) and be unexpired (403); `Content-Length` must equal the signed
//! size (absent 411, smaller 400, larger 413), `Content-Type` the signed type (400); a used slot
//! is 409. The body is streamed to `ROOT/ID/data.part` and renamed to `data` when complete;
//! it must arrive within 30 s + size / `min_upload_rate` (else 408), and at most
//! `max_concurrent_uploads` PUTs run at once (503).
//!
//! GET and HEAD (XEP-0363 §6 leaves serving to the HTTP server): the file streamed with its
//! signed type, `Content-Disposition` (RFC 6266), validators and caching (`ETag`,
//! `Last-Modified`, `Cache-Control: immutable`, `If-None-Match` → 304), single byte ranges
//! (RFC 9110 §14: 206, 416), and headers that keep a hostile upload from running script on
//! this origin (`X-Content-Type-Options: nosniff`, a sandboxing `Content-Security-Policy`).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canto_core::Server;
use canto_proto::upload::{self as up, Meta, RangeAnswer, Record, Slot};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::HttpContext;

/// The policy of every response here: nothing the file contains may load, run or frame.
const CSP: &str = "default-src 'none'; frame-ancestors 'none'; form-action 'none'; sandbox";

/// Uploaded files: the services' secrets (read from storage once) and the PUTs running.
pub struct Files {
    secrets: Mutex<HashMap<String, Arc<[u8]>>>,
    active: Arc<AtomicUsize>,
}

impl Files {
    /// The files of `server`'s upload services.
    pub fn new(_server: &Arc<Server>) -> Files {
        Files {
            secrets: Mutex::new(HashMap::new()),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// PUTs running now.
    pub fn active_uploads(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The signing secret of the upload service `domain`, if it has one yet.
    async fn secret(&self, server: &Server, domain: &str) -> Option<Arc<[u8]>> {
        let cached = self.secrets.lock().ok()?.get(domain).cloned();
        if cached.is_some() {
            return cached;
        }
        let s: Arc<[u8]> = server
            .storage
            .kv
            .get(up::SECRET_STORE, domain, "")
            .await
            .ok()
            .flatten()
            .filter(|s| s.len() >= 32)?
            .into();
        if let Ok(mut m) = self.secrets.lock() {
            m.insert(domain.to_string(), s.clone());
        }
        Some(s)
    }
}

/// What this side reads of `[upload]` (the module owns and validates the section).
struct Settings {
    root: PathBuf,
    max_concurrent: usize,
    min_rate: u64,
    /// Seconds a file lives, for `Cache-Control: max-age`.
    max_age: u64,
}

fn settings(config: &canto_core::Config) -> Settings {
    let sec = config.sections.get(up::SECTION);
    let int = |k: &str| {
        sec.and_then(|v| v.get(k))
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
    };
    let path = sec
        .and_then(|v| v.get("path"))
        .and_then(|v| v.as_str())
        .unwrap_or(up::DEFAULT_PATH);
    let days = int("expire_days").unwrap_or(up::DEFAULT_EXPIRE_DAYS);
    let max_age = match int("expire_after").filter(|s| *s > 0) {
        Some(s) => s,
        None if days > 0 => days.saturating_mul(86_400),
        // Kept forever: a year is what caches take as "forever" (RFC 9111 §5.2.2.1 advice).
        None => 365 * 86_400,
    };
    Settings {
        root: up::root(&config.data_dir, path),
        max_concurrent: int("max_concurrent_uploads")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(up::DEFAULT_MAX_CONCURRENT)
            .max(1),
        min_rate: int("min_upload_rate")
            .unwrap_or(up::DEFAULT_MIN_RATE)
            .max(1),
        max_age,
    }
}

/// `/upload/{id}/{name}`.
pub(super) async fn handle(
    State(ctx): State<Arc<HttpContext>>,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    let s = {
        let config = ctx.c2s.server.config();
        settings(&config)
    };
    let mut resp = match *req.method() {
        Method::GET | Method::HEAD => {
            let head = req.method() == Method::HEAD;
            serve(&s, &id, &name, head, req.headers()).await
        }
        Method::PUT => {
            let size = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let r = put(&ctx, &s, &id, &name, req).await;
            // docs/metrics.md: stored uploads and their bytes; refusals by HTTP status.
            match r.status() {
                StatusCode::CREATED => canto_core::metrics::upload_stored(size),
                StatusCode::FORBIDDEN => canto_core::metrics::upload_refused("forbidden"),
                StatusCode::PAYLOAD_TOO_LARGE => canto_core::metrics::upload_refused("too_large"),
                StatusCode::CONFLICT => canto_core::metrics::upload_refused("slot_used"),
                StatusCode::SERVICE_UNAVAILABLE => canto_core::metrics::upload_refused("busy"),
                _ => canto_core::metrics::upload_refused("bad_request"),
            }
            r
        }
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The file of slot `id` named `name`, if it is stored: its description and path.
async fn find(root: &FsPath, id: &str, name: &str) -> Option<(Meta, PathBuf)> {
    if !up::valid_id(id) {
        return None;
    }
    let dir = up::slot_dir(root, id);
    let meta = Meta::decode(&tokio::fs::read(dir.join(up::META_FILE)).await.ok()?)?;
    (meta.filename == name).then_some((meta, dir.join(up::DATA_FILE)))
}

/// GET and HEAD.
async fn serve(s: &Settings, id: &str, name: &str, head: bool, headers: &HeaderMap) -> Response {
    let Some((meta, path)) = find(&s.root, id, name).await else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    // The content of a slot never changes: its id is a strong validator.
    let etag = format!("\"{id}\"");
    let mut h = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(header::ETAG, etag.clone());
    put(header::LAST_MODIFIED, http_date(meta.stored));
    put(
        header::CACHE_CONTROL,
        format!("public, max-age={}, immutable", s.max_age),
    );
    put(header::ACCEPT_RANGES, "bytes".into());
    // RFC 9110 §13.1.2: If-None-Match (weak comparison) → 304.
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let hit = inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
        if hit {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().extend(h);
            return r;
        }
    }
    let ct = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static(up::DEFAULT_CONTENT_TYPE));
    h.insert(header::CONTENT_TYPE, ct);
    if let Ok(v) =
        HeaderValue::from_str(&up::content_disposition(&meta.filename, &meta.content_type))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // RFC 9110 §13.1.5: a range applies only if If-Range (when sent) still names this file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => up::parse_range(r, len),
        _ => RangeAnswer::Full,
    };
    let (status, start, count) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, len),
        RangeAnswer::Partial(a, b) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r.headers_mut().remove(header::CONTENT_TYPE);
            return r;
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = if head {
        Body::empty()
    } else {
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
        }
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file.take(count),
            IO_CHUNK,
        ))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().extend(h);
    r
}

/// Counts one running PUT while alive.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes a half-written upload unless [`Partial::keep`] was called: on every early return,
/// and when the request's future is dropped (the client went away, the server stopped).
struct Partial {
    part: Option<PathBuf>,
    dir: PathBuf,
}

impl Partial {
    fn keep(mut self) {
        self.part = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.part.take() {
            let _ = std::fs::remove_file(&p);
            // The slot's directory goes too if nothing else is in it (a retry recreates it).
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Bytes per file read or write (a bounded buffer per transfer: memory stays constant).
const IO_CHUNK: usize = 256 * 1024;

/// PUT (XEP-0363 §5).
async fn put(ctx: &HttpContext, s: &Settings, id: &str, name: &str, req: Request) -> Response {
    let server = &ctx.c2s.server;
    // The token: only the requester was given it, in the slot's <header/>.
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, t) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
        })
    else {
        return plain(StatusCode::FORBIDDEN, "missing upload authorization\n");
    };
    let Ok(unverified) = Slot::parse_unverified(token) else {
        return plain(StatusCode::FORBIDDEN, "invalid upload authorization\n");
    };
    let Some(secret) = ctx.uploads.secret(server, &unverified.service).await else {
        return plain(StatusCode::FORBIDDEN, "invalid upload authorization\n");
    };
    let Ok(slot) = Slot::verify(token, &secret) else {
        return plain(StatusCode::FORBIDDEN, "invalid upload authorization\n");
    };
    if slot.id != id || slot.filename != name || !up::valid_id(id) {
        return plain(
            StatusCode::FORBIDDEN,
            "the authorization is for another slot\n",
        );
    }
    if up::now() > slot.expires {
        return plain(StatusCode::FORBIDDEN, "the upload slot has expired\n");
    }
    // The signed size, announced (hyper then delivers exactly that many bytes).
    let Some(length) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return plain(StatusCode::LENGTH_REQUIRED, "Content-Length is required\n");
    };
    if length > slot.size {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the slot's size\n",
        );
    }
    if length < slot.size {
        return plain(
            StatusCode::BAD_REQUEST,
            "Content-Length is not the slot's size\n",
        );
    }
    if let Some(signed) = &slot.content_type {
        let sent = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(up::normalize_content_type);
        if sent.as_deref() != Some(signed.as_str()) {
            return plain(
                StatusCode::BAD_REQUEST,
                "Content-Type is not the slot's content type\n",
            );
        }
    }
    let active = ctx.uploads.active.clone();
    if active.fetch_add(1, Ordering::Relaxed) >= s.max_concurrent {
        active.fetch_sub(1, Ordering::Relaxed);
        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "too many uploads; retry\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    }
    let _running = Running(active);
    let dir = up::slot_dir(&s.root, id);
    let data = dir.join(up::DATA_FILE);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        warn!(error = %e, dir = %dir.display(), "upload: cannot create the directory");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file\n");
    }
    if tokio::fs::try_exists(&data).await.unwrap_or(true) {
        return plain(StatusCode::CONFLICT, "this slot has been used\n");
    }
    let part_path = dir.join(up::PART_FILE);
    // create_new claims the slot: a second PUT running at the same time gets 409.
    let mut file = match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part_path)
        .await
    {
        // Writes gathered into large ones: each tokio::fs write is a trip to the blocking
        // pool, and the body arrives in frames of a few KiB (docs/benchmarks.md, uploads).
        Ok(f) => tokio::io::BufWriter::with_capacity(IO_CHUNK, f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return plain(StatusCode::CONFLICT, "this slot is being used\n");
        }
        Err(e) => {
            warn!(error = %e, "upload: cannot create the file");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file\n");
        }
    };
    let partial = Partial {
        part: Some(part_path.clone()),
        dir: dir.clone(),
    };
    // The first PUT may have finished between the check above and the claim.
    if tokio::fs::try_exists(&data).await.unwrap_or(true) {
        return plain(StatusCode::CONFLICT, "this slot has been used\n");
    }
    // Slow uploads (slowloris on the body): the whole body within 30 s + size / min rate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30 + slot.size / s.min_rate);
    let mut body = req.into_body();
    let mut written: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "upload too slow\n"),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(error = %e, "upload: body ended early");
                return plain(StatusCode::BAD_REQUEST, "the body could not be read\n");
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        written += chunk.len() as u64;
        if written > slot.size {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than the slot's size\n",
            );
        }
        if let Err(e) = file.write_all(&chunk).await {
            warn!(error = %e, "upload: write failed");
            return plain(StatusCode::INSUFFICIENT_STORAGE, "cannot store the file\n");
        }
    }
    if written != slot.size {
        return plain(StatusCode::BAD_REQUEST, "the body is not the slot's size\n");
    }
    if let Err(e) = async {
        file.flush().await?;
        file.get_ref().sync_all().await
    }
    .await
    {
        warn!(error = %e, "upload: sync failed");
        return plain(StatusCode::INSUFFICIENT_STORAGE, "cannot store the file\n");
    }
    drop(file);
    let stored = up::now();
    let meta = Meta {
        service: slot.service.clone(),
        owner: slot.requester.clone(),
        filename: slot.filename.clone(),
        content_type: slot
            .content_type
            .clone()
            .unwrap_or_else(|| up::DEFAULT_CONTENT_TYPE.to_string()),
        size: slot.size,
        stored,
    };
    // The description first, then the file into place: a file is served only when whole.
    let meta_part = dir.join("meta.part");
    let placed = async {
        tokio::fs::write(&meta_part, meta.encode()).await?;
        tokio::fs::rename(&meta_part, dir.join(up::META_FILE)).await?;
        tokio::fs::rename(&part_path, &data).await
    }
    .await;
    if let Err(e) = placed {
        warn!(error = %e, "upload: cannot put the file in place");
        let _ = tokio::fs::remove_file(&meta_part).await;
        let _ = tokio::fs::remove_file(dir.join(up::META_FILE)).await;
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file\n");
    }
    partial.keep();
    let record = Record::Stored {
        size: slot.size,
        stored,
    };
    if let Err(e) = server
        .storage
        .map
        .set(
            up::RECORD_STORE,
            &slot.service,
            &slot.requester,
            id,
            Some(&record.encode()),
        )
        .await
    {
        warn!(error = %e, "upload: the file's record was not written");
    }
    debug!(id, size = slot.size, owner = %slot.requester, "upload stored");
    plain(StatusCode::CREATED, "created\n")
}

/// An IMF-fixdate (RFC 9110 §5.6.7) of `secs` since the Unix epoch.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = canto_stanza::datetime::civil_from_days(days);
    let month = MONTHS
        .get(usize::try_from(m - 1).unwrap_or(0))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}

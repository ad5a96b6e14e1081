//! SCRAM (RFC 5802, RFC 7677) server side, with channel binding `tls-exporter` (RFC 9266) and
//! `tls-server-end-point` (RFC 5929).

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::keys::{Credentials, DEFAULT_ITERATIONS, HashAlgo};
use super::mechanism::{SaslFailure, Step};
use super::server::{Context, check_authzid, normalize_username};

/// Random bytes in the server's nonce part (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;

/// Client-first parsed and checked; waiting for the account's credentials.
pub(super) struct Pending {
    algo: HashAlgo,
    /// Nodeprep-normalized username.
    pub(super) username: String,
    /// Virtual host, only to make invented salts host-specific.
    host: String,
    /// `client-first-message-bare`, part of AuthMessage.
    client_first_bare: String,
    client_nonce: String,
    pub(super) server_nonce: String,
    /// What `c=` in client-final must decode to: gs2 header followed by the binding data.
    cb_input: Vec<u8>,
}

/// Server-first sent; waiting for client-final.
pub(super) struct AwaitFinal {
    algo: HashAlgo,
    username: String,
    cb_input: Vec<u8>,
    /// `client-nonce || server-nonce`.
    nonce: String,
    /// `client-first-message-bare "," server-first-message`.
    auth_prefix: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// False for an unknown account: the exchange is played out but always fails.
    known: bool,
}

/// Parses and checks client-first-message (RFC 5802 §7).
pub(super) fn client_first(
    algo: HashAlgo,
    plus: bool,
    ctx: &Context,
    msg: &[u8],
) -> Result<Pending, SaslFailure> {
    let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
    if msg.contains('\0') {
        return Err(SaslFailure::MalformedRequest);
    }

    // RFC 5802 §7: gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = msg.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let (authz, bare) = rest.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
    let gs2_header = &msg[..flag.len() + authz.len() + 2];

    let binding = match flag {
        "n" => Binding::None,
        "y" => Binding::ClientSupports,
        _ => match flag.strip_prefix("p=") {
            // RFC 5802 §7: cb-name = 1*(ALPHA / DIGIT / "." / "-")
            Some(name)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
            {
                Binding::Required(name)
            }
            _ => return Err(SaslFailure::MalformedRequest),
        },
    };
    let authzid = if authz.is_empty() {
        String::new()
    } else {
        let name = authz
            .strip_prefix("a=")
            .ok_or(SaslFailure::MalformedRequest)?;
        unescape_saslname(name)?
    };

    // RFC 5802 §7: client-first-message-bare = [reserved-mext ","] username "," nonce
    // ["," extensions]
    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or_default();
    if first.starts_with("m=") {
        // RFC 5802 §5.1: "m" is reserved; its presence must fail the exchange.
        return Err(SaslFailure::MalformedRequest);
    }
    let raw_user = first
        .strip_prefix("n=")
        .ok_or(SaslFailure::MalformedRequest)?;
    let raw_user = unescape_saslname(raw_user)?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(SaslFailure::MalformedRequest)?;
    if !is_valid_nonce(client_nonce) {
        return Err(SaslFailure::MalformedRequest);
    }
    check_extensions(attrs)?;

    // RFC 5802 §6: channel-binding negotiation and downgrade detection.
    let cb_data: &[u8] = match (plus, binding) {
        (false, Binding::None) => &[],
        // The client could bind but thinks we cannot; we advertised -PLUS, so someone stripped it.
        (false, Binding::ClientSupports) if ctx.plus_offered => {
            return Err(SaslFailure::NotAuthorized);
        }
        (false, Binding::ClientSupports) => &[],
        // Binding requested with a mechanism that does not carry it.
        (false, Binding::Required(_)) => return Err(SaslFailure::NotAuthorized),
        // A -PLUS mechanism must use "p=" (RFC 5802 §6).
        (true, Binding::None | Binding::ClientSupports) => {
            return Err(SaslFailure::MalformedRequest);
        }
        (true, Binding::Required(name)) => ctx.cb.get(name).ok_or(SaslFailure::NotAuthorized)?,
    };

    let username = normalize_username(&raw_user)?;
    check_authzid(&authzid, &username, &ctx.host)?;

    let mut cb_input = Vec::with_capacity(gs2_header.len() + cb_data.len());
    cb_input.extend_from_slice(gs2_header.as_bytes());
    cb_input.extend_from_slice(cb_data);

    Ok(Pending {
        algo,
        username,
        host: ctx.host.clone(),
        client_first_bare: bare.to_owned(),
        client_nonce: client_nonce.to_owned(),
        server_nonce: new_server_nonce(),
        cb_input,
    })
}

#[derive(Clone, Copy)]
enum Binding<'a> {
    /// "n": client does not support channel binding.
    None,
    /// "y": client supports it but thinks the server does not.
    ClientSupports,
    /// "p=name": client uses this binding type.
    Required(&'a str),
}

impl Pending {
    /// Builds server-first-message (RFC 5802 §7) and the state for client-final. For an unknown
    /// account a stable, made-up salt and the default iteration count are used so the reply
    /// looks like a real one (RFC 5802 §9 / RFC 7677 §4: no user enumeration).
    pub(super) fn server_first(self, creds: Option<&Credentials>) -> (AwaitFinal, String) {
        let (salt, iterations, stored_key, server_key, known) = match creds {
            Some(c) => {
                let k = c.keys(self.algo);
                (
                    k.salt.clone(),
                    k.iterations,
                    k.stored_key.clone(),
                    k.server_key.clone(),
                    true,
                )
            }
            None => {
                let len = self.algo.hash(b"").len();
                let decoy = Credentials::decoy(
                    process_secret(),
                    &self.host,
                    &self.username,
                    DEFAULT_ITERATIONS,
                );
                (
                    decoy.keys(self.algo).salt.clone(),
                    DEFAULT_ITERATIONS,
                    vec![0; len],
                    vec![0; len],
                    false,
                )
            }
        };
        let nonce = format!("{}{}", self.client_nonce, self.server_nonce);
        // RFC 5802 §7: server-first-message = [reserved-mext ","] nonce "," salt ","
        // iteration-count ["," extensions]
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
        let auth_prefix = format!("{},{server_first}", self.client_first_bare);
        (
            AwaitFinal {
                algo: self.algo,
                username: self.username,
                cb_input: self.cb_input,
                nonce,
                auth_prefix,
                stored_key,
                server_key,
                known,
            },
            server_first,
        )
    }
}

impl AwaitFinal {
    /// Checks client-final-message (RFC 5802 §7) and produces server-final on success.
    pub(super) fn client_final(self, msg: &[u8]) -> Step {
        match self.verify(msg) {
            Ok(step) => step,
            Err(failure) => Step::Failure(failure),
        }
    }

    fn verify(self, msg: &[u8]) -> Result<Step, SaslFailure> {
        let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
        if msg.contains('\0') {
            return Err(SaslFailure::MalformedRequest);
        }
        // RFC 5802 §7: client-final-message = client-final-message-without-proof "," proof,
        // where without-proof = channel-binding "," nonce ["," extensions].
        let (without_proof, proof) = msg.rsplit_once(',').ok_or(SaslFailure::MalformedRequest)?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let mut attrs = without_proof.split(',');
        let cb = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslFailure::MalformedRequest)?;
        check_extensions(attrs)?;
        let cb = decode_b64(cb)?;
        let proof = decode_b64(proof)?;

        // RFC 5802 §6: c= must carry exactly our gs2 header and binding data.
        if !bool::from(cb.ct_eq(&self.cb_input)) {
            return Err(SaslFailure::NotAuthorized);
        }
        // RFC 5802 §5.1: the nonce must be the one from server-first, unchanged.
        if nonce != self.nonce {
            return Err(SaslFailure::NotAuthorized);
        }

        // RFC 5802 §3: AuthMessage = client-first-bare "," server-first "," final-without-proof
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let algo = self.algo;
        // ClientSignature = HMAC(StoredKey, AuthMessage); ClientKey = ClientProof XOR ClientSignature
        let signature = algo.hmac(&self.stored_key, auth_message.as_bytes());
        let proof_ok = if proof.len() == signature.len() {
            let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
            // RFC 5802 §5.1: H(ClientKey) must equal StoredKey (compared in constant time).
            algo.hash(&client_key).ct_eq(&self.stored_key)
        } else {
            subtle::Choice::from(0)
        };
        if !bool::from(proof_ok & subtle::Choice::from(u8::from(self.known))) {
            return Err(SaslFailure::NotAuthorized);
        }

        // RFC 5802 §3: ServerSignature = HMAC(ServerKey, AuthMessage); server-final "v=".
        let server_signature = algo.hmac(&self.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", STANDARD.encode(server_signature));
        Ok(Step::Success {
            username: self.username,
            additional_data: Some(server_final.into_bytes()),
        })
    }
}

/// RFC 5802 §7 saslname: `=2C` is ",", `=3D` is "=", any other "=" is invalid; non-empty.
fn unescape_saslname(s: &str) -> Result<String, SaslFailure> {
    if s.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let escape = rest
            .get(pos..pos + 3)
            .ok_or(SaslFailure::MalformedRequest)?;
        match escape {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 §7: c-nonce = printable = %x21-2B / %x2D-7E (no ","), at least one character.
fn is_valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 5802 §7: extensions = attr-val *("," attr-val), attr-val = ALPHA "=" value. Unknown
/// extensions are ignored, but "m" is reserved and must fail (RFC 5802 §5.1).
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), SaslFailure> {
    for attr in attrs {
        let b = attr.as_bytes();
        if b.len() < 3 || !b[0].is_ascii_alphabetic() || b[1] != b'=' || b[0] == b'm' {
            return Err(SaslFailure::MalformedRequest);
        }
    }
    Ok(())
}

fn decode_b64(s: &str) -> Result<Vec<u8>, SaslFailure> {
    STANDARD
        .decode(s)
        .map_err(|_| SaslFailure::MalformedRequest)
}

/// A fresh server nonce part: random bytes in base64, which is printable and has no ",".
fn new_server_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    rand::fill(&mut bytes);
    STANDARD.encode(bytes)
}

/// The secret for decoy salts when the caller passes no credentials at all (the server passes
/// [`Credentials::decoy`] under its stored secret instead): per process, so a salt is stable
/// across attempts.
fn process_secret() -> &'static [u8] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::fill(&mut s);
        s
    })
}

#[cfg(test)]
mod tests {
    use super::super::keys::ScramKeys;
    use super::super::{ChannelBindings, Mechanism, SaslServer};
    use super::*;

    const HOST: &str = "example.org";

    fn b64(s: &str) -> Vec<u8> {
        STANDARD.decode(s).expect("test vector is base64")
    }

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).expect("utf-8")
    }

    /// Credentials for "pencil" with the RFC example salts and 4096 iterations.
    fn rfc_creds() -> Credentials {
        Credentials {
            sha1: ScramKeys::derive(HashAlgo::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096),
            sha256: ScramKeys::derive(
                HashAlgo::Sha256,
                "pencil",
                &b64("W22ZaJ0SNY7soEsUEjb6gQ=="),
                4096,
            ),
        }
    }

    fn creds() -> &'static Credentials {
        static C: OnceLock<Credentials> = OnceLock::new();
        C.get_or_init(|| Credentials::from_password("pencil", 32))
    }

    fn tls() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some((0u8..32).collect()),
            tls_server_end_point: Some(vec![0xaa; 32]),
        }
    }

    /// A minimal SCRAM client: returns client-final and the expected server-final.
    fn client_final(
        algo: HashAlgo,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        cb_input: &[u8],
        nonce_override: Option<&str>,
    ) -> (String, String) {
        let mut salt = None;
        let mut iters = 0;
        let mut nonce = "";
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(b64(v));
            } else if let Some(v) = attr.strip_prefix("i=") {
                iters = v.parse().expect("iteration count");
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = v;
            }
        }
        let salt = salt.expect("salt");
        let nonce = nonce_override.unwrap_or(nonce);
        let salted = algo.salted_password(password.as_bytes(), &salt, iters);
        let keys = ScramKeys::from_salted_password(algo, &salted, &salt, iters);
        let client_key = algo.hmac(&salted, b"Client Key");
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(cb_input));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = algo.hmac(&keys.stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let v = algo.hmac(&keys.server_key, auth.as_bytes());
        (
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            format!("v={}", STANDARD.encode(v)),
        )
    }

    /// Runs start + credentials; returns the server and server-first.
    fn begin(
        mech: Mechanism,
        cb: ChannelBindings,
        plus_offered: bool,
        client_first: &str,
        creds: Option<&Credentials>,
    ) -> (SaslServer, String) {
        let (mut srv, step) =
            SaslServer::start(mech, HOST, cb, plus_offered, Some(client_first.as_bytes()));
        assert!(
            matches!(step, Step::NeedCredentials { .. }),
            "{client_first}: {step:?}"
        );
        match srv.credentials(creds) {
            Step::Challenge(c) => (srv, String::from_utf8(c).expect("utf-8")),
            other => panic!("expected server-first, got {other:?}"),
        }
    }

    fn first_failure(
        mech: Mechanism,
        cb: ChannelBindings,
        plus_offered: bool,
        client_first: &str,
    ) -> Step {
        SaslServer::start(mech, HOST, cb, plus_offered, Some(client_first.as_bytes())).1
    }

    #[test]
    fn rfc5802_example() {
        let (mut srv, step) = SaslServer::start(
            Mechanism::ScramSha1,
            HOST,
            ChannelBindings::default(),
            false,
            Some(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"),
        );
        assert_eq!(
            step,
            Step::NeedCredentials {
                username: "user".into()
            }
        );
        srv.set_server_nonce("3rfcNHYJY1ZVvWVs7j");
        let Step::Challenge(server_first) = srv.credentials(Some(&rfc_creds())) else {
            panic!("no server-first");
        };
        assert_eq!(
            s(&server_first),
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let step = srv.respond(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional_data: Some(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=".to_vec()),
            }
        );
        // Message after completion.
        assert_eq!(
            srv.respond(b"c=biws"),
            Step::Failure(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            srv.credentials(Some(&rfc_creds())),
            Step::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn rfc7677_example() {
        // Without an initial response: empty challenge first.
        let (mut srv, step) = SaslServer::start(
            Mechanism::ScramSha256,
            HOST,
            ChannelBindings::default(),
            false,
            None,
        );
        assert_eq!(step, Step::Challenge(vec![]));
        assert_eq!(
            srv.respond(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            Step::NeedCredentials {
                username: "user".into()
            }
        );
        srv.set_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        let Step::Challenge(server_first) = srv.credentials(Some(&rfc_creds())) else {
            panic!("no server-first");
        };
        assert_eq!(
            s(&server_first),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let step = srv.respond(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional_data: Some(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()),
            }
        );
    }

    #[test]
    fn fresh_nonce_is_long_printable_and_random() {
        let bare = "n=user,r=abcdef";
        let (_, sf1) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let (_, sf2) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let nonce1 = sf1
            .split(',')
            .next()
            .and_then(|r| r.strip_prefix("r=abcdef"));
        let nonce1 = nonce1.expect("nonce starts with the client nonce");
        assert!(nonce1.len() >= 24);
        assert!(is_valid_nonce(nonce1));
        assert_ne!(sf1, sf2);
    }

    #[test]
    fn wrong_password() {
        let bare = "n=user,r=abcdef";
        for mech in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let algo = mech.hash_algo().expect("scram");
            let (mut srv, sf) = begin(
                mech,
                ChannelBindings::default(),
                false,
                &format!("n,,{bare}"),
                Some(creds()),
            );
            let (cf, _) = client_final(algo, "pencil2", bare, &sf, b"n,,", None);
            assert_eq!(
                srv.respond(cf.as_bytes()),
                Step::Failure(SaslFailure::NotAuthorized)
            );
            // And the right password works for comparison.
            let (mut srv, sf) = begin(
                mech,
                ChannelBindings::default(),
                false,
                &format!("n,,{bare}"),
                Some(creds()),
            );
            let (cf, v) = client_final(algo, "pencil", bare, &sf, b"n,,", None);
            assert_eq!(
                srv.respond(cf.as_bytes()),
                Step::Success {
                    username: "user".into(),
                    additional_data: Some(v.into_bytes())
                }
            );
        }
    }

    #[test]
    fn unknown_user_looks_like_wrong_password() {
        let bare = "n=nobody,r=abcdef";
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            None,
        );
        // Same shape as a real server-first, with the default iteration count and a 16-byte salt.
        let parts: Vec<&str> = sf.split(',').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], format!("i={DEFAULT_ITERATIONS}"));
        let salt = b64(parts[1].strip_prefix("s=").expect("salt"));
        assert_eq!(salt.len(), 16);
        // Stable across attempts, like a stored salt.
        let (_, sf2) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            None,
        );
        assert_eq!(sf2.split(',').nth(1), Some(parts[1]));
        let (cf, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, b"n,,", None);
        assert_eq!(
            srv.respond(cf.as_bytes()),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn decoy_credentials_look_like_a_real_account_with_a_wrong_password() {
        let secret = [7u8; 32];
        let real = Credentials::from_password("pencil", 5000);
        let decoy = |user: &str| Credentials::decoy(&secret, HOST, user, 5000);
        for algo_mech in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let algo = algo_mech.hash_algo().expect("SCRAM");
            let run = |user: &str, creds: &Credentials, password: &str| {
                let bare = format!("n={user},r=abcdef");
                let (mut srv, sf) = begin(
                    algo_mech,
                    ChannelBindings::default(),
                    false,
                    &format!("n,,{bare}"),
                    Some(creds),
                );
                let (cf, _) = client_final(algo, password, &bare, &sf, b"n,,", None);
                (sf, srv.respond(cf.as_bytes()))
            };
            let (real_sf, wrong) = run("user", &real, "wrong");
            let (decoy_sf, unknown) = run("nobody", &decoy("nobody"), "pencil");
            // The same failure as a wrong password …
            assert_eq!(wrong, Step::Failure(SaslFailure::NotAuthorized));
            assert_eq!(unknown, wrong);
            // … after a server-first of the same shape: the iteration count of real accounts
            // and a salt of the same length.
            let fields = |sf: &str| -> (usize, String) {
                let parts: Vec<&str> = sf.split(',').collect();
                let salt = b64(parts[1].strip_prefix("s=").expect("salt"));
                (salt.len(), parts[2].to_string())
            };
            assert_eq!(fields(&decoy_sf), fields(&real_sf));
            assert_eq!(fields(&decoy_sf).1, "i=5000");
            // Stable across attempts, different per user, and keyed by the server secret.
            let (again, _) = run("nobody", &decoy("nobody"), "x");
            assert_eq!(again.split(',').nth(1), decoy_sf.split(',').nth(1));
            let (other, _) = run("someone", &decoy("someone"), "x");
            assert_ne!(other.split(',').nth(1), decoy_sf.split(',').nth(1));
            let keyed = Credentials::decoy(&[8u8; 32], HOST, "nobody", 5000);
            assert_ne!(keyed.keys(algo).salt, decoy("nobody").keys(algo).salt);
        }
    }

    #[test]
    fn tampered_nonce() {
        let bare = "n=user,r=abcdef";
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let full = sf
            .split(',')
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .expect("nonce");
        // A proof computed correctly over the tampered message must still be refused.
        let tampered = format!("{full}x");
        let (cf, _) = client_final(
            HashAlgo::Sha256,
            "pencil",
            bare,
            &sf,
            b"n,,",
            Some(&tampered),
        );
        assert_eq!(
            srv.respond(cf.as_bytes()),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        // Only the client part.
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let (cf, _) = client_final(
            HashAlgo::Sha256,
            "pencil",
            bare,
            &sf,
            b"n,,",
            Some("abcdef"),
        );
        assert_eq!(
            srv.respond(cf.as_bytes()),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn plus_success_with_tls_exporter() {
        let bare = "n=user,r=abcdef";
        let header = "p=tls-exporter,,";
        for mech in [Mechanism::ScramSha256Plus, Mechanism::ScramSha1Plus] {
            let algo = mech.hash_algo().expect("scram");
            let (mut srv, sf) = begin(mech, tls(), true, &format!("{header}{bare}"), Some(creds()));
            let mut cb_input = header.as_bytes().to_vec();
            cb_input.extend(0u8..32);
            let (cf, v) = client_final(algo, "pencil", bare, &sf, &cb_input, None);
            assert_eq!(
                srv.respond(cf.as_bytes()),
                Step::Success {
                    username: "user".into(),
                    additional_data: Some(v.into_bytes())
                }
            );
        }
    }

    #[test]
    fn plus_success_with_tls_server_end_point_and_authzid() {
        let bare = "n=user,r=abcdef";
        let header = "p=tls-server-end-point,a=user@example.org,";
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256Plus,
            tls(),
            true,
            &format!("{header}{bare}"),
            Some(creds()),
        );
        let mut cb_input = header.as_bytes().to_vec();
        cb_input.extend_from_slice(&[0xaa; 32]);
        let (cf, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, &cb_input, None);
        assert!(matches!(srv.respond(cf.as_bytes()), Step::Success { .. }));
    }

    #[test]
    fn wrong_channel_binding_data() {
        let bare = "n=user,r=abcdef";
        let header = "p=tls-exporter,,";
        let cases: [&[u8]; 4] = [
            // Other connection's binding data.
            b"p=tls-exporter,,xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            // Header only, data stripped.
            b"p=tls-exporter,,",
            // A different header than the one in client-first.
            b"n,,",
            b"p=tls-server-end-point,,",
        ];
        for bad in cases {
            let (mut srv, sf) = begin(
                Mechanism::ScramSha256Plus,
                tls(),
                true,
                &format!("{header}{bare}"),
                Some(creds()),
            );
            let (cf, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, bad, None);
            assert_eq!(
                srv.respond(cf.as_bytes()),
                Step::Failure(SaslFailure::NotAuthorized)
            );
        }
        // Non-PLUS: c= must be exactly the gs2 header.
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            tls(),
            false,
            &format!("y,,{bare}"),
            Some(creds()),
        );
        let (cf, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, b"n,,", None);
        assert_eq!(
            srv.respond(cf.as_bytes()),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn downgrade_detection() {
        // "y" while -PLUS was offered: a man in the middle removed it (RFC 5802 §6).
        assert_eq!(
            first_failure(Mechanism::ScramSha256, tls(), true, "y,,n=user,r=abc"),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        // "y" when -PLUS was not offered is fine.
        let bare = "n=user,r=abc";
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("y,,{bare}"),
            Some(creds()),
        );
        let (cf, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, b"y,,", None);
        assert!(matches!(srv.respond(cf.as_bytes()), Step::Success { .. }));
    }

    #[test]
    fn channel_binding_policy() {
        // p= without a -PLUS mechanism.
        assert_eq!(
            first_failure(
                Mechanism::ScramSha256,
                tls(),
                true,
                "p=tls-exporter,,n=user,r=abc"
            ),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        // -PLUS with an unavailable or unknown binding.
        let exporter_only = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        for header in ["p=tls-server-end-point,,", "p=tls-unique,,"] {
            assert_eq!(
                first_failure(
                    Mechanism::ScramSha256Plus,
                    exporter_only.clone(),
                    true,
                    &format!("{header}n=user,r=abc")
                ),
                Step::Failure(SaslFailure::NotAuthorized)
            );
        }
        // -PLUS without TLS at all.
        assert_eq!(
            first_failure(
                Mechanism::ScramSha1Plus,
                ChannelBindings::default(),
                false,
                "p=tls-exporter,,n=user,r=abc"
            ),
            Step::Failure(SaslFailure::NotAuthorized)
        );
        // -PLUS must use p=.
        for header in ["n,,", "y,,"] {
            assert_eq!(
                first_failure(
                    Mechanism::ScramSha256Plus,
                    tls(),
                    true,
                    &format!("{header}n=user,r=abc")
                ),
                Step::Failure(SaslFailure::MalformedRequest)
            );
        }
        // Syntactically bad cb-name.
        for header in ["p=,,", "p=tls_exporter,,", "p,,", "x,,"] {
            assert_eq!(
                first_failure(
                    Mechanism::ScramSha256Plus,
                    tls(),
                    true,
                    &format!("{header}n=user,r=abc")
                ),
                Step::Failure(SaslFailure::MalformedRequest),
                "{header}"
            );
        }
    }

    #[test]
    fn authzid_of_another_account() {
        for authzid in [
            "a=admin@example.org",
            "a=user@evil.example",
            "a=example.org",
        ] {
            assert_eq!(
                first_failure(
                    Mechanism::ScramSha256,
                    ChannelBindings::default(),
                    false,
                    &format!("n,{authzid},n=user,r=abc")
                ),
                Step::Failure(SaslFailure::InvalidAuthzid),
                "{authzid}"
            );
        }
        // Own identity, case-normalized, is fine.
        assert_eq!(
            first_failure(
                Mechanism::ScramSha256,
                ChannelBindings::default(),
                false,
                "n,a=USER@example.org,n=User,r=abc"
            ),
            Step::NeedCredentials {
                username: "user".into()
            }
        );
    }

    #[test]
    fn saslname_escapes() {
        assert_eq!(unescape_saslname("a=2Cb=3Dc"), Ok("a,b=c".to_owned()));
        assert_eq!(unescape_saslname("="), Err(SaslFailure::MalformedRequest));
        assert_eq!(unescape_saslname("a=2"), Err(SaslFailure::MalformedRequest));
        assert_eq!(
            unescape_saslname("a=2c"),
            Err(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            unescape_saslname("a=41"),
            Err(SaslFailure::MalformedRequest)
        );
        assert_eq!(unescape_saslname("é=3D"), Ok("é=".to_owned()));
        assert_eq!(unescape_saslname(""), Err(SaslFailure::MalformedRequest));
        // An escaped username goes through nodeprep after unescaping.
        assert_eq!(
            first_failure(
                Mechanism::ScramSha1,
                ChannelBindings::default(),
                false,
                "n,,n=Us=3Der,r=abc"
            ),
            Step::NeedCredentials {
                username: "us=er".into()
            }
        );
    }

    #[test]
    fn malformed_client_first() {
        for msg in [
            "",
            "n",
            "n,",
            "n,,",
            "n,,n=user",
            "n,,n=user,r=",
            "n,,r=abc,n=user",
            "n,,m=ext,n=user,r=abc",
            "n,,n=user,r=abc,m=ext",
            "n,,n=user,r=abc,",
            "n,,n=user,r=abc,x",
            "n,,n=user,r=abc,xy=1",
            "n,,n=,r=abc",
            "n,,n=us=er,r=abc",
            "n,,n=user,r=a\u{7f}c",
            "n,,n=user,r=ab c",
            "n,user,n=user,r=abc",
            "n,a=,n=user,r=abc",
            "n,,n=us\0er,r=abc",
        ] {
            assert_eq!(
                first_failure(
                    Mechanism::ScramSha256,
                    ChannelBindings::default(),
                    false,
                    msg
                ),
                Step::Failure(SaslFailure::MalformedRequest),
                "{msg:?}"
            );
        }
        // Extensions after the nonce are allowed and ignored.
        assert!(matches!(
            first_failure(
                Mechanism::ScramSha256,
                ChannelBindings::default(),
                false,
                "n,,n=user,r=abc,x=1,y=a=b"
            ),
            Step::NeedCredentials { .. }
        ));
        // Non-UTF-8.
        let (_, step) = SaslServer::start(
            Mechanism::ScramSha1,
            HOST,
            ChannelBindings::default(),
            false,
            Some(b"n,,n=\xff,r=abc"),
        );
        assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
        // An empty initial response ("=").
        let (_, step) = SaslServer::start(
            Mechanism::ScramSha1,
            HOST,
            ChannelBindings::default(),
            false,
            Some(b""),
        );
        assert_eq!(step, Step::Failure(SaslFailure::MalformedRequest));
    }

    #[test]
    fn malformed_client_final() {
        let bare = "n=user,r=abc";
        let (_, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let (good, _) = client_final(HashAlgo::Sha256, "pencil", bare, &sf, b"n,,", None);
        let nonce = sf.split(',').next().expect("r=");
        let proof = good.rsplit(',').next().expect("p=");
        for msg in [
            String::new(),
            "c=biws".to_owned(),
            format!("c=biws,{nonce}"),
            format!("{nonce},c=biws,{proof}"),
            format!("c=biws,{proof},{nonce}"),
            format!("c=biws,{nonce},m=x,{proof}"),
            format!("c=bi!s,{nonce},{proof}"),
            format!("c=biws,{nonce},p=not base64"),
            format!("c=biws,{nonce},{proof},"),
            format!("c=biws,{nonce},{proof}\0"),
        ] {
            let (mut srv, _) = begin(
                Mechanism::ScramSha256,
                ChannelBindings::default(),
                false,
                &format!("n,,{bare}"),
                Some(creds()),
            );
            assert_eq!(
                srv.respond(msg.as_bytes()),
                Step::Failure(SaslFailure::MalformedRequest),
                "{msg:?}"
            );
        }
        // A proof of the wrong length is simply wrong.
        let (mut srv, sf) = begin(
            Mechanism::ScramSha256,
            ChannelBindings::default(),
            false,
            &format!("n,,{bare}"),
            Some(creds()),
        );
        let nonce = sf.split(',').next().expect("r=");
        let short = format!("c=biws,{nonce},p=AAAA");
        assert_eq!(
            srv.respond(short.as_bytes()),
            Step::Failure(SaslFailure::NotAuthorized)
        );
    }
}

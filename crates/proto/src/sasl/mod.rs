//! SASL (RFC 6120 §6, RFC 4422): server-side mechanisms, sans I/O.
//!
//! [`SaslServer`] drives one exchange for a [`Mechanism`]: PLAIN (RFC 4616) and SCRAM-SHA-1 /
//! SCRAM-SHA-256 with and without channel binding (RFC 5802, RFC 7677, RFC 9266, RFC 5929).
//! The caller decodes `<auth/>`/`<response/>` text with [`decode_payload`], feeds the bytes in,
//! looks up [`Credentials`] when told to, and encodes outgoing data with [`encode_payload`].

mod keys;
mod mechanism;
mod plain;
mod scram;
mod server;

pub use keys::{Credentials, DEFAULT_ITERATIONS, HashAlgo, ScramKeys};
pub use mechanism::{
    ChannelBindings, Mechanism, SaslFailure, Step, decode_payload, encode_payload,
};
pub use server::SaslServer;

/// Fuzzing entry point: drives a [`SaslServer`] through a whole exchange built from `data`.
///
/// Byte 0 selects the mechanism and flags (bits 0–2: mechanism, 3: -PLUS offered, 4: channel
/// bindings present, 5: initial response present, 6: account unknown). The rest is split on
/// `0xFF` into client messages. Every `NeedCredentials` is answered with fixed credentials for
/// the password "pencil" (or `None`). Asserts nothing; it must simply not panic.
#[doc(hidden)]
pub fn fuzz_exchange(data: &[u8]) {
    let _ = fuzz_drive(data);
}

/// [`fuzz_exchange`], returning the last step taken and how many credential lookups were
/// answered (for tests).
fn fuzz_drive(data: &[u8]) -> Option<(Step, usize)> {
    use std::sync::OnceLock;
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    let creds = CREDS.get_or_init(|| Credentials {
        sha1: ScramKeys::derive(HashAlgo::Sha1, "pencil", b"fuzz-salt-sha1..", 16),
        sha256: ScramKeys::derive(HashAlgo::Sha256, "pencil", b"fuzz-salt-sha256", 16),
    });

    let (&flags, rest) = data.split_first()?;
    let mech = Mechanism::ALL[usize::from(flags & 0x07) % Mechanism::ALL.len()];
    let plus_offered = flags & 0x08 != 0;
    let cb = if flags & 0x10 != 0 {
        ChannelBindings {
            tls_exporter: Some(vec![0x42; 32]),
            tls_server_end_point: Some(vec![0x24; 32]),
        }
    } else {
        ChannelBindings::default()
    };
    let known = flags & 0x40 == 0;
    let mut messages = rest.split(|&b| b == 0xff);
    let initial = if flags & 0x20 != 0 {
        messages.next()
    } else {
        None
    };

    let (mut server, mut step) = SaslServer::start(mech, "example.org", cb, plus_offered, initial);
    // Bounded: each round either consumes a message or answers a credential request, and
    // credential requests cannot repeat without a message in between.
    let mut lookups = 0;
    for _ in 0..64 {
        step = match step {
            Step::NeedCredentials { .. } => {
                lookups += 1;
                server.credentials(known.then_some(creds))
            }
            _ => match messages.next() {
                Some(msg) => server.respond(msg),
                None => break,
            },
        };
    }
    Some((step, lookups))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic pseudo-random bytes without extra dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const TEMPLATES: [&[u8]; 6] = [
        b"\x24\0user\0pencil",
        b"\x24user@example.org\0user\0pencil\xff\0user\0pencil",
        b"\x22n,,n=user,r=abc\xffc=biws,r=abc,p=AAAA\xffc=biws",
        b"\x38p=tls-exporter,a=user@example.org,n=user,r=abc\xffc=cD10bHMtZXhwb3J0ZXIsLA==,r=abc,p=AAAA",
        b"\x23y,,n=us=2Cer,r=x,e=1\xffc=eSws,r=xyz,e=2,p=\xff\xff",
        b"\x19\xffp=tls-server-end-point,,n=user,r=a\xffc=,r=,p=",
    ];

    const SPECIAL: [u8; 8] = [b',', b'=', 0, 0xff, b'n', b'r', b'p', b'c'];

    #[test]
    fn never_panics_on_pseudo_random_input() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = [0usize; 3];
        for i in 0..600 {
            let input: Vec<u8> = if i % 3 == 0 {
                let len = rng.below(96);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = TEMPLATES[rng.below(TEMPLATES.len())].to_vec();
                for _ in 0..rng.below(4) {
                    let pos = rng.below(v.len() + 1);
                    match rng.below(4) {
                        0 => v.insert(pos, SPECIAL[rng.below(SPECIAL.len())]),
                        1 if pos < v.len() => v[pos] = rng.next() as u8,
                        2 if pos < v.len() => {
                            v.remove(pos);
                        }
                        _ => v.truncate(pos.max(1)),
                    }
                }
                if let Some(first) = v.first_mut() {
                    // Keep unknown-account PLAIN (a full PBKDF2 run) rare to keep the test fast.
                    if *first & 0x07 == 4 && i % 10 != 0 {
                        *first &= !0x40;
                    }
                }
                v
            };
            if let Some((step, lookups)) = fuzz_drive(&input) {
                outcomes[0] += usize::from(matches!(step, Step::Success { .. }));
                outcomes[1] += usize::from(matches!(step, Step::Failure(_)));
                outcomes[2] += lookups;
            }
            let text = String::from_utf8_lossy(&input);
            let _ = decode_payload(&text);
        }
        // The inputs reach past the first message, not just the parser's front door.
        assert!(
            outcomes[0] > 10 && outcomes[1] > 100 && outcomes[2] > 50,
            "{outcomes:?}"
        );
    }

    #[test]
    fn fuzz_entry_reaches_success() {
        // PLAIN with the fuzz credentials authenticates.
        assert!(matches!(
            fuzz_drive(b"\x24\0user\0pencil"),
            Some((Step::Success { .. }, 1))
        ));
        // Unknown account.
        assert_eq!(
            fuzz_drive(b"\x64\0user\0pencil"),
            Some((Step::Failure(SaslFailure::NotAuthorized), 1))
        );
        // A message after success.
        assert_eq!(
            fuzz_drive(b"\x24\0user\0pencil\xffx"),
            Some((Step::Failure(SaslFailure::MalformedRequest), 1))
        );
        assert_eq!(fuzz_drive(b""), None);
        fuzz_exchange(b"\x04");
    }
}

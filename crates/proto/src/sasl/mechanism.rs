//! Mechanism names, failure conditions, the caller-facing [`Step`] and payload encoding.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::keys::HashAlgo;

/// A SASL mechanism this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256-PLUS (RFC 7677, with channel binding).
    ScramSha256Plus,
    /// SCRAM-SHA-1-PLUS (RFC 5802, with channel binding).
    ScramSha1Plus,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-1 (RFC 5802).
    ScramSha1,
    /// PLAIN (RFC 4616).
    Plain,
}

impl Mechanism {
    /// Every mechanism, in preference order, strongest first.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The registered SASL mechanism name (RFC 4422 §3.1), as sent in `<mechanism/>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Looks a mechanism up by its exact name (mechanism names are upper case, RFC 4422 §3.1).
    pub fn from_name(s: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether this is a channel-binding (`-PLUS`) SCRAM variant (RFC 5802 §4).
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }

    /// Whether this is a SCRAM family member.
    pub fn is_scram(self) -> bool {
        self.hash_algo().is_some()
    }

    /// The hash a SCRAM mechanism is built on; `None` for PLAIN.
    pub fn hash_algo(self) -> Option<HashAlgo> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(HashAlgo::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(HashAlgo::Sha1),
            Mechanism::Plain => None,
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel-binding data available on this connection (RFC 5929 / RFC 9266). None when not on TLS.
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    /// `tls-exporter` (RFC 9266): 32 bytes of TLS exporter output.
    pub tls_exporter: Option<Vec<u8>>,
    /// `tls-server-end-point` (RFC 5929 §4): hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// Whether any channel binding is available, i.e. whether `-PLUS` mechanisms can be offered.
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }

    /// The binding data for a channel-binding type name (RFC 5056 §2.1 names).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }

    /// Names of the available bindings, for XEP-0440 `<sasl-channel-binding/>`.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("tls-exporter", self.tls_exporter.is_some()),
            ("tls-server-end-point", self.tls_server_end_point.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
    }
}

/// RFC 6120 §6.5 failure conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslFailure {
    /// RFC 6120 §6.5.1: the client sent `<abort/>`.
    #[error("authentication aborted")]
    Aborted,
    /// RFC 6120 §6.5.2.
    #[error("account disabled")]
    AccountDisabled,
    /// RFC 6120 §6.5.3.
    #[error("credentials expired")]
    CredentialsExpired,
    /// RFC 6120 §6.5.4.
    #[error("encryption required")]
    EncryptionRequired,
    /// RFC 6120 §6.5.5: bad base64.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// RFC 6120 §6.5.6.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// RFC 6120 §6.5.7.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// RFC 6120 §6.5.8.
    #[error("malformed request")]
    MalformedRequest,
    /// RFC 6120 §6.5.9.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// RFC 6120 §6.5.10.
    #[error("not authorized")]
    NotAuthorized,
    /// RFC 6120 §6.5.11.
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// The defined-condition element name, e.g. `not-authorized`.
    pub fn condition(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Look up stored Credentials for this (nodeprep-normalized) username on the host and call
    /// `SaslServer::credentials`.
    NeedCredentials {
        /// The nodeprep-normalized localpart.
        username: String,
    },
    /// Send `<challenge/>` with these (raw, not base64) bytes.
    Challenge(Vec<u8>),
    /// Authentication succeeded; send `<success/>` with `additional_data` if Some (raw bytes;
    /// SCRAM server-final).
    Success {
        /// The authenticated, nodeprep-normalized localpart.
        username: String,
        /// SCRAM server-final-message, `None` for PLAIN.
        additional_data: Option<Vec<u8>>,
    },
    /// Send `<failure/>` with this condition; the exchange is over.
    Failure(SaslFailure),
}

impl Step {
    /// Whether the exchange is over (success or failure).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Step::Success { .. } | Step::Failure(_))
    }
}

/// Decodes the text of `<auth/>`/`<response/>`: "=" means empty; invalid base64 →
/// `Err(SaslFailure::IncorrectEncoding)` (RFC 6120 §6.4.2).
///
/// Whether `<auth/>` carried an initial response at all (empty element) is the caller's
/// business; an empty string decodes to an empty payload here.
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslFailure> {
    let text = text.trim_ascii();
    // RFC 6120 §6.4.2: a zero-length payload is sent as a single "=".
    if text == "=" || text.is_empty() {
        return Ok(Vec::new());
    }
    STANDARD
        .decode(text)
        .map_err(|_| SaslFailure::IncorrectEncoding)
}

/// Encodes a payload for `<challenge/>`/`<success/>`; empty → "=" (RFC 6120 §6.4.2).
pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        STANDARD.encode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert_eq!(Mechanism::ScramSha256Plus.name(), "SCRAM-SHA-256-PLUS");
        assert!(Mechanism::ScramSha1Plus.is_plus());
        assert!(!Mechanism::ScramSha1.is_plus());
        assert!(!Mechanism::Plain.is_scram());
    }

    #[test]
    fn payload_encoding() {
        assert_eq!(decode_payload("="), Ok(vec![]));
        assert_eq!(decode_payload(""), Ok(vec![]));
        assert_eq!(decode_payload("AGZvbwBiYXI="), Ok(b"\0foo\0bar".to_vec()));
        assert_eq!(
            decode_payload("AGZvbwBiYXI"),
            Err(SaslFailure::IncorrectEncoding)
        );
        assert_eq!(decode_payload("!!!!"), Err(SaslFailure::IncorrectEncoding));
        assert_eq!(decode_payload("=="), Err(SaslFailure::IncorrectEncoding));
        assert_eq!(encode_payload(b""), "=");
        assert_eq!(encode_payload(b"\0foo\0bar"), "AGZvbwBiYXI=");
        assert_eq!(SaslFailure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslFailure::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
    }

    #[test]
    fn channel_binding_names() {
        let cb = ChannelBindings::default();
        assert!(!cb.any());
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        assert!(cb.any());
        assert_eq!(cb.names().collect::<Vec<_>>(), ["tls-exporter"]);
        assert_eq!(cb.get("tls-exporter"), Some(&[1u8; 32][..]));
        assert_eq!(cb.get("tls-unique"), None);
    }
}

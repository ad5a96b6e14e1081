//! Peer certificates of server-to-server streams: chain verification against the system trust
//! store and `[s2s] ca_file`, XMPP name matching (RFC 6120 §13.7.1.2 with RFC 9525), DANE
//! (RFC 6698, RFC 7671, RFC 7673), and the rustls configurations of s2s streams.
//!
//! The TLS handshake itself accepts any peer certificate (handshake signatures are still
//! checked): whether a peer is authenticated by its certificate (SASL EXTERNAL) or must fall
//! back to dialback is decided afterwards, by [`Verifier::verify`] (or [`dane_matches`]) on the
//! connection's `peer_certificates()` and the domain the peer claims.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use sha2::Digest;
use webpki::{EndEntityCert, KeyPurposeId, KeyPurposeIdIter};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::tls::{CertStore, TlsError, provider};

/// ALPN protocol of s2s direct TLS (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// Why a peer's certificate does not authenticate it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The peer presented no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    BadEncoding(String),
    /// No path to a trusted root (unknown issuer, bad signature, constraint violated...).
    #[error("certificate not trusted: {0}")]
    Untrusted(String),
    /// A certificate of the chain has expired.
    #[error("certificate expired")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error("certificate not valid yet")]
    NotYetValid,
    /// The extended key usage allows neither serverAuth nor clientAuth.
    #[error("certificate not for TLS servers or clients (extended key usage)")]
    WrongUsage,
    /// The chain is trusted but the certificate does not name the domain.
    #[error("certificate not valid for {0}")]
    NameMismatch(String),
}

impl CertError {
    fn from_webpki(e: webpki::Error) -> CertError {
        use webpki::Error as E;
        match e {
            E::CertExpired { .. } => CertError::Expired,
            E::CertNotValidYet { .. } => CertError::NotYetValid,
            E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => CertError::WrongUsage,
            E::BadDer
            | E::BadDerTime
            | E::TrailingData(_)
            | E::UnsupportedCertVersion
            | E::MalformedExtensions
            | E::ExtensionValueInvalid
            | E::InvalidSerialNumber
            | E::InvalidCertValidity => CertError::BadEncoding(e.to_string()),
            other => CertError::Untrusted(other.to_string()),
        }
    }
}

/// Extended key usage of a peer's certificate: serverAuth or clientAuth (or anyExtendedKeyUsage,
/// or no EKU extension at all, RFC 5280 §4.2.1.12). A peer's certificate is our TLS client
/// certificate on inbound streams and its server certificate on outbound ones; XMPP servers
/// present the same certificate both ways, and Let's Encrypt no longer includes clientAuth.
struct ServerOrClientAuth;

/// id-kp-serverAuth, 1.3.6.1.5.5.7.3.1 (DER contents).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth, 1.3.6.1.5.5.7.3.2.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// anyExtendedKeyUsage, 2.5.29.37.0.
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

impl webpki::ExtendedKeyUsageValidator for ServerOrClientAuth {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let accepted = [
            KeyPurposeId::new(EKU_SERVER_AUTH),
            KeyPurposeId::new(EKU_CLIENT_AUTH),
            KeyPurposeId::new(EKU_ANY),
        ];
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if accepted.contains(&id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::server_auth(),
                present,
            },
        ))
    }
}

/// Builds and checks a path from `chain[0]` (the end entity; the rest are intermediates in any
/// order) to one of `anchors` at `now`: signatures, validity periods, basic and name
/// constraints, extended key usage. No revocation checks.
fn check_path(
    algs: &WebPkiSupportedAlgorithms,
    anchors: &[TrustAnchor<'_>],
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), CertError> {
    let (ee, intermediates) = chain.split_first().ok_or(CertError::NoCertificate)?;
    let cert = EndEntityCert::try_from(ee).map_err(CertError::from_webpki)?;
    cert.verify_for_usage(
        algs.all,
        anchors,
        intermediates,
        now,
        ServerOrClientAuth,
        None,
        None,
    )
    .map(|_| ())
    .map_err(CertError::from_webpki)
}

/// Verifies peers' certificate chains against the system trust store plus `[s2s] ca_file`.
pub struct Verifier {
    roots: Vec<TrustAnchor<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Verifier {
    /// The system's trusted roots (as Prosody uses the system store; `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` are honoured) plus the PEM certificates of `ca_file` (none when the path
    /// is empty). An unreadable or certificate-less `ca_file` is an error naming the file;
    /// unreadable system roots are logged and skipped. Reading the system store takes a while
    /// (files, ~150 certificates): build one `Verifier` at startup and share it.
    pub fn new(ca_file: &Path) -> Result<Verifier, TlsError> {
        let file_err = |message: String| TlsError::File {
            path: ca_file.to_owned(),
            message,
        };
        let mut roots = system_roots();
        let system = roots.len();
        if !ca_file.as_os_str().is_empty() {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| file_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(file_err("no certificate in file".into()));
            }
            for cert in &certs {
                let anchor = webpki::anchor_from_trusted_cert(cert)
                    .map_err(|e| file_err(format!("unusable CA certificate: {e}")))?;
                roots.push(anchor.to_owned());
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                "s2s: no trusted CA certificates (system store empty, no [s2s] ca_file): \
                 peers can only authenticate by dialback"
            );
        } else {
            tracing::debug!(
                system,
                ca_file = roots.len() - system,
                "s2s: trusted CA certificates loaded"
            );
        }
        Ok(Verifier {
            roots,
            algs: provider().signature_verification_algorithms,
        })
    }

    /// A verifier trusting exactly `roots` (no system store): for tests and closed federations.
    pub fn from_roots(roots: &[CertificateDer<'_>]) -> Result<Verifier, CertError> {
        let roots = roots
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(CertError::from_webpki)
            })
            .collect::<Result<_, _>>()?;
        Ok(Verifier {
            roots,
            algs: provider().signature_verification_algorithms,
        })
    }

    /// How many trust anchors there are.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// Whether `chain` (end entity first, as `peer_certificates()` gives it) authenticates
    /// `domain`: a path to a trusted root valid now with serverAuth or clientAuth usage
    /// ([`Verifier::verify_chain`]), and the end entity names `domain` ([`name_matches`]).
    pub fn verify(&self, chain: &[CertificateDer<'_>], domain: &str) -> Result<(), CertError> {
        self.verify_at(chain, domain, UnixTime::now())
    }

    /// The chain half of [`Verifier::verify`], without the name.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), CertError> {
        check_path(&self.algs, &self.roots, chain, UnixTime::now())
    }

    fn verify_at(
        &self,
        chain: &[CertificateDer<'_>],
        domain: &str,
        now: UnixTime,
    ) -> Result<(), CertError> {
        check_path(&self.algs, &self.roots, chain, now)?;
        match chain.first() {
            Some(ee) if name_matches(ee, domain) => Ok(()),
            Some(_) => Err(CertError::NameMismatch(domain.to_string())),
            None => Err(CertError::NoCertificate),
        }
    }
}

fn system_roots() -> Vec<TrustAnchor<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "s2s: reading the system's CA certificates");
    }
    let mut roots = Vec::with_capacity(found.certs.len());
    for cert in &found.certs {
        match webpki::anchor_from_trusted_cert(cert) {
            Ok(a) => roots.push(a.to_owned()),
            Err(e) => {
                tracing::debug!(error = %e, "s2s: skipping an unusable system CA certificate")
            }
        }
    }
    roots
}

// ---------------------------------------------------------------------------------------------
// Names: RFC 6120 §13.7.1.2, RFC 9525 §6.

/// subjectAltName, 2.5.29.17 (DER contents of the OID).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// id-on-xmppAddr, 1.3.6.1.5.5.7.8.5 (RFC 6120 §13.7.1.4).
const OID_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// id-on-dnsSRV, 1.3.6.1.5.5.7.8.7 (RFC 4985).
const OID_DNS_SRV: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_IA5_STRING: u8 = 0x16;

/// Whether the end-entity certificate names the XMPP domain `domain` (RFC 6120 §13.7.1.2):
/// an SRV-ID `_xmpp-server.DOMAIN` (or `_xmpps-server.`, XEP-0368), an XmppAddr equal to the
/// domain, or a DNS-ID equal to it (a wildcard only as the whole left-most label, standing for
/// exactly one label, RFC 9525 §6.3). The common name counts only when the certificate has no
/// subjectAltName extension at all (RFC 9525 §6.1 has no CN-ID; RFC 6125 §6.4.4 allowed it
/// only without SANs). Comparison is on A-labels, ASCII case-insensitive (RFC 9525 §6.2.1). A
/// malformed certificate matches nothing.
pub fn name_matches(end_entity: &CertificateDer<'_>, domain: &str) -> bool {
    let Some(reference) = reference_domain(domain) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return false;
    };
    let mut has_san = false;
    for ext in cert.extensions() {
        if ext.oid.as_bytes() != OID_SUBJECT_ALT_NAME {
            continue;
        }
        has_san = true;
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            // A subjectAltName that does not parse: no CN fallback either.
            return false;
        };
        if san
            .general_names
            .iter()
            .any(|name| general_name_matches(name, &reference))
        {
            return true;
        }
    }
    if has_san {
        // RFC 9525 §6.1 / RFC 6125 §6.4.4: never the CN when a subjectAltName exists.
        return false;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| dns_id_matches(cn, &reference))
}

fn general_name_matches(name: &GeneralName<'_>, reference: &str) -> bool {
    match name {
        // DNS-ID (RFC 9525 §6.3).
        GeneralName::DNSName(presented) => dns_id_matches(presented, reference),
        GeneralName::OtherName(oid, value) if oid.as_bytes() == OID_DNS_SRV => {
            // SRV-ID (RFC 6120 §13.7.1.2.1, RFC 4985): IA5String `_Service.Name`; no wildcards.
            let Some(srv) = other_name_string(value, TAG_IA5_STRING) else {
                return false;
            };
            let Some((service, name)) = srv.split_once('.') else {
                return false;
            };
            (service.eq_ignore_ascii_case("_xmpp-server")
                || service.eq_ignore_ascii_case("_xmpps-server"))
                && presented_dns(name).is_some_and(|n| !n.contains('*') && n == reference)
        }
        GeneralName::OtherName(oid, value) if oid.as_bytes() == OID_XMPP_ADDR => {
            // XmppAddr (RFC 6120 §13.7.1.4): UTF8String, the bare domain exactly; no wildcards
            // (rejected by `reference_domain`), internationalized labels compared as A-labels.
            other_name_string(value, TAG_UTF8_STRING)
                .and_then(reference_domain)
                .is_some_and(|addr| addr == reference)
        }
        _ => false,
    }
}

/// The reference identifier for `domain` (RFC 9525 §6.2.1): A-labels (IDNA, UTS #46),
/// lowercase, without a trailing dot; `None` if it is not a usable DNS domain name.
fn reference_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    let ascii = idna::domain_to_ascii(domain).ok()?;
    let valid = ascii.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    valid.then_some(ascii)
}

/// A presented DNS name: ASCII only (A-labels, RFC 5280 §4.2.1.6), lowercased, one trailing
/// dot removed, no empty label, letters, digits, `-`, `_` and `*` only.
fn presented_dns(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        });
    valid.then(|| name.to_ascii_lowercase())
}

/// RFC 9525 §6.3: a DNS-ID equals the reference identifier, or is `*.` followed by a base
/// domain of at least two labels and the reference is exactly one more label on that base (not
/// the base itself, not two labels). `*` anywhere else (`f*.example.com`, `*.*.example.com`)
/// matches nothing.
fn dns_id_matches(presented: &str, reference: &str) -> bool {
    let Some(presented) = presented_dns(presented) else {
        return false;
    };
    match presented.strip_prefix("*.") {
        Some(base) => {
            if base.contains('*') || !base.contains('.') {
                return false;
            }
            reference
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == base)
        }
        None => !presented.contains('*') && presented == reference,
    }
}

/// The string inside an otherName value (`[0] EXPLICIT` around a string of `tag`), as
/// x509-parser leaves it after the type-id.
fn other_name_string(value: &[u8], tag: u8) -> Option<&str> {
    let (0xa0, explicit, []) = der_tlv(value)? else {
        return None;
    };
    let (found, bytes, []) = der_tlv(explicit)? else {
        return None;
    };
    if found != tag || (tag == TAG_IA5_STRING && !bytes.is_ascii()) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// One DER element: (tag, contents, what follows). Single-byte tags, definite lengths.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The SNI name (and `ServerName` for rustls) of a remote domain: its A-label form.
pub fn sni_name(domain: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(reference_domain(domain)?).ok()
}

// ---------------------------------------------------------------------------------------------
// DANE: RFC 6698, RFC 7671, RFC 7673.

/// A TLSA record: (certificate usage, selector, matching type, certificate association data).
pub type TlsaRecord = (u8, u8, u8, Vec<u8>);

const DANE_TA: u8 = 2;
const DANE_EE: u8 = 3;

/// Whether any record is usable here: usage DANE-TA(2) or DANE-EE(3), selector Cert(0) or
/// SPKI(1), matching type Full(0), SHA2-256(1) or SHA2-512(2). When TLSA records exist but none
/// is usable, they are treated as absent (RFC 7671 §4.1, RFC 6698 §4.1); when some are usable
/// and [`dane_matches`] is false, the connection must not be authenticated by PKIX instead.
pub fn dane_usable(tlsa: &[TlsaRecord]) -> bool {
    tlsa.iter().any(|&(usage, selector, matching, _)| {
        matches!(usage, DANE_TA | DANE_EE) && selector <= 1 && matching <= 2
    })
}

/// Whether the DNSSEC-validated TLSA records `tlsa` authenticate the peer's `chain` (end entity
/// first) for one of `reference_names` (the source domain, and the SRV target host if the
/// caller accepts it, RFC 7673 §4):
/// - DANE-EE(3) matching the end entity is enough: no path, no validity period, no name check
///   (RFC 7671 §5.1).
/// - DANE-TA(2) matching a certificate of the chain (not the end entity), or a "2 1 0" record
///   giving the full public key of a trust anchor absent from the chain (RFC 7671 §5.2.2):
///   the chain must verify up to that anchor (signatures, validity, usage) and the end entity
///   must match a reference name by [`name_matches`] (RFC 7671 §5.2).
///
/// Records of other usages (PKIX-TA/PKIX-EE) or unknown selectors and matching types never
/// match.
pub fn dane_matches(
    chain: &[CertificateDer<'_>],
    reference_names: &[&str],
    tlsa: &[TlsaRecord],
) -> bool {
    dane_matches_at(chain, reference_names, tlsa, UnixTime::now())
}

fn dane_matches_at(
    chain: &[CertificateDer<'_>],
    reference_names: &[&str],
    tlsa: &[TlsaRecord],
    now: UnixTime,
) -> bool {
    let Some(ee) = chain.first() else {
        return false;
    };
    if tlsa.iter().any(|r| r.0 == DANE_EE && tlsa_matches(r, ee)) {
        return true;
    }
    let algs = provider().signature_verification_algorithms;
    let name_ok = || reference_names.iter().any(|n| name_matches(ee, n));
    for record in tlsa.iter().filter(|r| r.0 == DANE_TA) {
        for (i, cert) in chain.iter().enumerate().skip(1) {
            if !tlsa_matches(record, cert) {
                continue;
            }
            let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) else {
                continue;
            };
            if check_path(&algs, &[anchor], &chain[..i], now).is_ok() && name_ok() {
                return true;
            }
        }
        // RFC 7671 §5.2.2: "2 1 0" may publish the whole public key of a trust anchor that the
        // server leaves out of its chain; it is then the issuer of the chain's last certificate.
        if record.1 == 1
            && record.2 == 0
            && let Some(anchor) = absent_anchor(chain, &record.3)
            && check_path(&algs, &[anchor], chain, now).is_ok()
            && name_ok()
        {
            return true;
        }
    }
    false
}

/// A trust anchor named as the issuer of the chain's last certificate with the public key
/// `spki` (a DER SubjectPublicKeyInfo).
fn absent_anchor<'a>(chain: &'a [CertificateDer<'a>], spki: &'a [u8]) -> Option<TrustAnchor<'a>> {
    let last = EndEntityCert::try_from(chain.last()?).ok()?;
    let (0x30, contents, []) = der_tlv(spki)? else {
        return None;
    };
    Some(TrustAnchor {
        subject: last.issuer().to_vec().into(),
        subject_public_key_info: contents.into(),
        name_constraints: None,
    })
}

/// Whether one TLSA record's selector and matching type give its association data for `cert`.
fn tlsa_matches(
    &(_, selector, matching, ref data): &TlsaRecord,
    cert: &CertificateDer<'_>,
) -> bool {
    let selected: Cow<'_, [u8]> = match selector {
        0 => Cow::Borrowed(cert.as_ref()),
        1 => match EndEntityCert::try_from(cert) {
            Ok(c) => Cow::Owned(c.subject_public_key_info().as_ref().to_vec()),
            Err(_) => return false,
        },
        _ => return false,
    };
    match matching {
        0 => selected.as_ref() == data.as_slice(),
        1 => sha2::Sha256::digest(selected.as_ref()).as_slice() == data.as_slice(),
        2 => sha2::Sha512::digest(selected.as_ref()).as_slice() == data.as_slice(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// TLS configurations.

/// Accepts any certificate chain during the handshake, for both roles, but checks the
/// handshake signatures with the crypto provider's algorithms: the certificate is judged after
/// the handshake, where failing means dialback rather than a broken connection.
#[derive(Debug)]
struct AcceptAnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAnyCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: "any certificate" (RFC 5246 §7.4.4, RFC 8446 §4.2.4 omitted).
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Presents the local domain's certificate (the one its c2s listeners serve, looked up at each
/// handshake so reloads apply) as the TLS client certificate.
#[derive(Debug)]
struct LocalDomainCert {
    certs: Arc<CertStore>,
    domain: String,
}

impl ResolvesClientCert for LocalDomainCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certs.certified_key(&self.domain)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The rustls configuration of outgoing s2s streams from `local_domain`: any server certificate
/// is accepted during the handshake (judge it afterwards with [`Verifier::verify`] on
/// `peer_certificates()`), our certificate for `local_domain` is the client certificate, and
/// session resumption is off. ALPN `xmpp-server` is offered when `direct_tls` (XEP-0368), none
/// on STARTTLS. Connect with [`sni_name`] of the remote domain as the server name (SNI).
pub fn client_config(
    certs: &Arc<CertStore>,
    local_domain: &str,
    direct_tls: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyCert {
        algs: provider.signature_verification_algorithms,
    });
    let resolver = Arc::new(LocalDomainCert {
        certs: certs.clone(),
        domain: local_domain.to_string(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder())
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    if direct_tls {
        cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    }
    cfg.resumption = Resumption::disabled();
    Arc::new(cfg)
}

/// The rustls configuration of incoming s2s streams (STARTTLS and direct TLS): our certificate
/// chosen by SNI as for c2s, an optional client certificate requested and any accepted during
/// the handshake (judge it afterwards with [`Verifier::verify`] on `peer_certificates()` before
/// offering SASL EXTERNAL), ALPN `xmpp-server`, no session resumption. Channel bindings come
/// from [`crate::tls::bindings`] as for c2s.
pub fn server_config(certs: &Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyCert {
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ServerConfig::builder())
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs.clone());
    cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, OtherNameValue,
        PublicKeyData, SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A test CA: its certificate and the issuer that signs leaves.
    struct Ca {
        der: CertificateDer<'static>,
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA");
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and its key, issued by `ca` (self-signed without one), with the
    /// subject CN "leaf" unless `edit` changes it.
    fn leaf_with_key(
        ca: Option<&Ca>,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        edit(&mut params);
        let cert = match ca {
            Some(ca) => params.signed_by(&key, &ca.issuer),
            None => params.self_signed(&key),
        }
        .expect("leaf");
        (cert.der().clone(), key)
    }

    fn leaf(ca: Option<&Ca>, edit: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        leaf_with_key(ca, edit).0
    }

    fn dns_names(names: &[&str]) -> impl FnOnce(&mut CertificateParams) {
        let sans: Vec<SanType> = names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().expect("IA5")))
            .collect();
        move |p| p.subject_alt_names = sans
    }

    /// One DER element.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// A GeneralName otherName with a string value of `tag`.
    fn other_name(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let inner = [der(0x06, oid), der(0xa0, &der(tag, value.as_bytes()))].concat();
        der(0xa0, &inner)
    }

    /// A subjectAltName extension made by hand (rcgen writes otherNames as UTF8String only).
    fn san_extension(general_names: &[Vec<u8>]) -> CustomExtension {
        CustomExtension::from_oid_content(&[2, 5, 29, 17], der(0x30, &general_names.concat()))
    }

    fn check(cert: &CertificateDer<'_>, domain: &str) -> bool {
        name_matches(cert, domain)
    }

    #[test]
    fn dns_id_exact_and_case_insensitive() {
        let cert = leaf(None, dns_names(&["example.org", "Other.Example.NET"]));
        assert!(check(&cert, "example.org"));
        assert!(check(&cert, "EXAMPLE.org"));
        assert!(check(&cert, "example.org."));
        assert!(check(&cert, "other.example.net"));
        assert!(!check(&cert, "www.example.org"));
        assert!(!check(&cert, "example.com"));
        assert!(!check(&cert, "org"));
        assert!(!check(&cert, ""));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let cert = leaf(None, dns_names(&["*.example.org"]));
        assert!(check(&cert, "chat.example.org"));
        assert!(check(&cert, "CHAT.example.org"));
        assert!(!check(&cert, "example.org"), "not the apex");
        assert!(!check(&cert, "a.b.example.org"), "not two labels");
        assert!(
            !check(&cert, "*.example.org"),
            "a wildcard is no reference identifier"
        );
        assert!(!check(&cert, "chat.example.com"));
        // `*` only as the whole left-most label, never on a single-label base.
        for bad in [
            "f*.example.org",
            "*oo.example.org",
            "chat.*.org",
            "*.org",
            "*.*.org",
        ] {
            let cert = leaf(None, dns_names(&[bad]));
            for domain in [
                "foo.example.org",
                "chat.example.org",
                "example.org",
                "a.org",
            ] {
                assert!(!check(&cert, domain), "{bad} must not match {domain}");
            }
        }
    }

    #[test]
    fn idn_compares_as_a_labels() {
        // "bücher.example" is "xn--bcher-kva.example".
        let cert = leaf(None, dns_names(&["xn--bcher-kva.example"]));
        assert!(check(&cert, "bücher.example"));
        assert!(check(&cert, "XN--BCHER-KVA.example"));
        let xmpp = leaf(None, |p| {
            p.subject_alt_names = vec![SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                OtherNameValue::Utf8String("bücher.example".into()),
            ))]
        });
        assert!(check(&xmpp, "xn--bcher-kva.example"));
        assert!(check(&xmpp, "bücher.example"));
    }

    #[test]
    fn xmpp_addr_exact_domain_only() {
        let cert = leaf(None, |p| {
            p.subject_alt_names = vec![
                SanType::OtherName((
                    vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                    OtherNameValue::Utf8String("xmpp.example".into()),
                )),
                SanType::OtherName((
                    vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                    OtherNameValue::Utf8String("*.wild.example".into()),
                )),
                SanType::OtherName((
                    vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                    OtherNameValue::Utf8String("user@jid.example".into()),
                )),
            ]
        });
        assert!(check(&cert, "xmpp.example"));
        assert!(check(&cert, "XMPP.Example"));
        assert!(!check(&cert, "sub.xmpp.example"));
        assert!(!check(&cert, "a.wild.example"), "no wildcards in XmppAddr");
        assert!(!check(&cert, "jid.example"), "a full JID is not the domain");
        // An XmppAddr in the wrong string type is ignored.
        let ia5 = leaf(None, |p| {
            p.custom_extensions = vec![san_extension(&[other_name(
                OID_XMPP_ADDR,
                TAG_IA5_STRING,
                "xmpp.example",
            )])]
        });
        assert!(!check(&ia5, "xmpp.example"));
    }

    #[test]
    fn srv_id() {
        let cert = leaf(None, |p| {
            p.custom_extensions = vec![san_extension(&[
                other_name(OID_DNS_SRV, TAG_IA5_STRING, "_xmpp-server.srv.example"),
                other_name(OID_DNS_SRV, TAG_IA5_STRING, "_xmpps-server.direct.example"),
                other_name(OID_DNS_SRV, TAG_IA5_STRING, "_xmpp-client.client.example"),
                other_name(OID_DNS_SRV, TAG_IA5_STRING, "_xmpp-server.*.wild.example"),
                other_name(OID_DNS_SRV, TAG_UTF8_STRING, "_xmpp-server.utf8.example"),
            ])]
        });
        assert!(check(&cert, "srv.example"));
        assert!(check(&cert, "SRV.example"));
        assert!(check(&cert, "direct.example"));
        assert!(!check(&cert, "client.example"), "c2s SRV-ID");
        assert!(!check(&cert, "a.wild.example"), "no wildcards in SRV-ID");
        assert!(!check(&cert, "utf8.example"), "SRVName is an IA5String");
        assert!(!check(&cert, "example"));
    }

    #[test]
    fn common_name_only_without_any_subject_alt_name() {
        let cn_only = leaf(None, |p| {
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "cn.example");
        });
        assert!(check(&cn_only, "cn.example"));
        assert!(!check(&cn_only, "other.example"));
        let cn_and_san = leaf(None, |p| {
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "cn.example");
            p.subject_alt_names = vec![SanType::DnsName(
                "unrelated.example".try_into().expect("IA5"),
            )];
        });
        assert!(
            !check(&cn_and_san, "cn.example"),
            "never CN when a SAN exists"
        );
        assert!(check(&cn_and_san, "unrelated.example"));
        // A SAN with only an otherName of another kind still disables the CN.
        let cn_and_other = leaf(None, |p| {
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "cn.example");
            p.subject_alt_names =
                vec![SanType::Rfc822Name("a@cn.example".try_into().expect("IA5"))];
        });
        assert!(!check(&cn_and_other, "cn.example"));
    }

    #[test]
    fn malformed_der_matches_nothing() {
        let good = leaf(None, dns_names(&["example.org"]));
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x30],
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            vec![0xff; 64],
            b"-----BEGIN CERTIFICATE-----".to_vec(),
        ];
        // Every truncation and a flipped byte at many offsets.
        let bytes = good.as_ref().to_vec();
        for cut in (0..bytes.len()).step_by(7) {
            inputs.push(bytes[..cut].to_vec());
        }
        for at in (0..bytes.len()).step_by(5) {
            let mut b = bytes.clone();
            b[at] ^= 0x55;
            inputs.push(b);
        }
        // A subjectAltName whose contents are garbage.
        let bad_san = leaf(None, |p| {
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "example.org");
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                vec![0x30, 0x05, 0x82, 0x09, b'x'],
            )];
        });
        assert!(
            !check(&bad_san, "example.org"),
            "no CN fallback on a broken SAN"
        );
        let verifier = Verifier::from_roots(&[]).expect("verifier");
        for input in inputs {
            let cert = CertificateDer::from(input);
            // Must not panic; a truncated or garbage certificate names nothing.
            let _ = check(&cert, "example.org");
            assert!(
                verifier
                    .verify(std::slice::from_ref(&cert), "example.org")
                    .is_err()
            );
            assert!(!dane_matches(
                &[cert],
                &["example.org"],
                &[(3, 1, 1, vec![0; 32])]
            ));
        }
        assert!(!check(
            &CertificateDer::from(vec![0x30, 0x00]),
            "example.org"
        ));
        assert_eq!(
            verifier.verify(&[], "example.org"),
            Err(CertError::NoCertificate)
        );
    }

    #[test]
    fn chain_to_a_trusted_ca() {
        let ca = ca("Test CA");
        let verifier = Verifier::from_roots(std::slice::from_ref(&ca.der)).expect("verifier");
        let cert = leaf(Some(&ca), dns_names(&["example.org"]));
        assert_eq!(
            verifier.verify(std::slice::from_ref(&cert), "example.org"),
            Ok(())
        );
        assert_eq!(
            verifier.verify(std::slice::from_ref(&cert), "example.net"),
            Err(CertError::NameMismatch("example.net".into()))
        );
        // Usage: serverAuth or clientAuth (or none) is fine; something else is not.
        for ekus in [
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ] {
            let cert = leaf(Some(&ca), |p| {
                p.subject_alt_names =
                    vec![SanType::DnsName("example.org".try_into().expect("IA5"))];
                p.extended_key_usages = ekus;
            });
            assert_eq!(verifier.verify(&[cert], "example.org"), Ok(()));
        }
        let email = leaf(Some(&ca), |p| {
            p.subject_alt_names = vec![SanType::DnsName("example.org".try_into().expect("IA5"))];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        });
        assert_eq!(
            verifier.verify(&[email], "example.org"),
            Err(CertError::WrongUsage)
        );
    }

    #[test]
    fn intermediate_chain() {
        let root = ca("Root");
        let mid_key = KeyPair::generate().expect("key");
        let mut mid_params = CertificateParams::default();
        mid_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        mid_params.distinguished_name = DistinguishedName::new();
        mid_params
            .distinguished_name
            .push(DnType::CommonName, "Intermediate");
        let mid_cert = mid_params
            .signed_by(&mid_key, &root.issuer)
            .expect("intermediate");
        let mid = Ca {
            der: mid_cert.der().clone(),
            pem: mid_cert.pem(),
            issuer: Issuer::new(mid_params, mid_key),
        };
        let cert = leaf(Some(&mid), dns_names(&["example.org"]));
        let verifier = Verifier::from_roots(std::slice::from_ref(&root.der)).expect("verifier");
        assert_eq!(
            verifier.verify(&[cert.clone(), mid.der.clone()], "example.org"),
            Ok(())
        );
        assert!(matches!(
            verifier.verify(&[cert], "example.org"),
            Err(CertError::Untrusted(_))
        ));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let ca = ca("Test CA");
        let verifier = Verifier::from_roots(std::slice::from_ref(&ca.der)).expect("verifier");
        let expired = leaf(Some(&ca), |p| {
            p.subject_alt_names = vec![SanType::DnsName("example.org".try_into().expect("IA5"))];
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        assert_eq!(
            verifier.verify(&[expired], "example.org"),
            Err(CertError::Expired)
        );
        let future = leaf(Some(&ca), |p| {
            p.subject_alt_names = vec![SanType::DnsName("example.org".try_into().expect("IA5"))];
            p.not_before = rcgen::date_time_ymd(3000, 1, 1);
        });
        assert_eq!(
            verifier.verify(&[future], "example.org"),
            Err(CertError::NotYetValid)
        );
    }

    #[test]
    fn self_signed_and_other_ca_refused() {
        let ca = ca("Test CA");
        let other = self::ca("Other CA");
        let verifier = Verifier::from_roots(std::slice::from_ref(&ca.der)).expect("verifier");
        let self_signed = leaf(None, dns_names(&["example.org"]));
        assert!(matches!(
            verifier.verify(&[self_signed], "example.org"),
            Err(CertError::Untrusted(_))
        ));
        let by_other = leaf(Some(&other), dns_names(&["example.org"]));
        assert!(matches!(
            verifier.verify(&[by_other], "example.org"),
            Err(CertError::Untrusted(_))
        ));
        // A CA certificate is no end entity.
        assert!(
            verifier
                .verify(std::slice::from_ref(&ca.der), "example.org")
                .is_err()
        );
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("canto-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn ca_file_beside_system_roots() {
        let ca = ca("File CA");
        let path = temp_file("ca.pem", &ca.pem);
        let verifier = Verifier::new(&path).expect("verifier");
        let system = Verifier::new(Path::new("")).expect("system roots");
        assert_eq!(verifier.root_count(), system.root_count() + 1);
        let cert = leaf(Some(&ca), dns_names(&["example.org"]));
        assert_eq!(
            verifier.verify(std::slice::from_ref(&cert), "example.org"),
            Ok(())
        );
        assert!(system.verify(&[cert], "example.org").is_err());

        let missing = Verifier::new(Path::new("/nonexistent/canto-ca.pem"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(missing.contains("canto-ca.pem"), "{missing}");
        let empty = temp_file("empty.pem", "nothing here\n");
        let msg = Verifier::new(&empty)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("empty.pem"), "{msg}");
    }

    fn digest(matching: u8, data: &[u8]) -> Vec<u8> {
        match matching {
            0 => data.to_vec(),
            1 => sha2::Sha256::digest(data).to_vec(),
            _ => sha2::Sha512::digest(data).to_vec(),
        }
    }

    #[test]
    fn dane_ee_selectors_and_matching_types() {
        let (cert, key) = leaf_with_key(None, |p| {
            p.subject_alt_names = vec![SanType::DnsName(
                "elsewhere.example".try_into().expect("IA5"),
            )];
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        let spki = key.subject_public_key_info();
        let other = leaf(None, dns_names(&["example.org"]));
        let chain = [cert.clone()];
        for matching in 0..=2u8 {
            // DANE-EE: self-signed, expired, another name: all irrelevant (RFC 7671 §5.1).
            let full = (3, 0, matching, digest(matching, cert.as_ref()));
            let by_key = (3, 1, matching, digest(matching, &spki));
            assert!(dane_matches(
                &chain,
                &["example.org"],
                std::slice::from_ref(&full)
            ));
            assert!(dane_matches(
                &chain,
                &["example.org"],
                std::slice::from_ref(&by_key)
            ));
            // Mismatch: another certificate's association data, or the selectors swapped.
            let wrong = (3, 0, matching, digest(matching, other.as_ref()));
            assert!(!dane_matches(
                &chain,
                &["example.org"],
                std::slice::from_ref(&wrong)
            ));
            assert!(!dane_matches(
                &chain,
                &["example.org"],
                &[(3, 1, matching, full.3.clone())]
            ));
            assert!(!dane_matches(
                &chain,
                &["example.org"],
                &[(3, 0, matching, by_key.3.clone())]
            ));
            // One matching record among others is enough.
            assert!(dane_matches(&chain, &["example.org"], &[wrong, by_key]));
        }
        // Unusable records never match: PKIX usages, unknown selector or matching type.
        let sha = digest(1, cert.as_ref());
        for record in [
            (1, 0, 1, sha.clone()),
            (0, 0, 1, sha.clone()),
            (3, 2, 1, sha.clone()),
            (3, 0, 3, sha.clone()),
        ] {
            assert!(!dane_matches(
                &chain,
                &["example.org"],
                std::slice::from_ref(&record)
            ));
            assert!(!dane_usable(&[record]));
        }
        assert!(dane_usable(&[(1, 0, 1, sha.clone()), (3, 1, 2, sha)]));
        assert!(!dane_matches(&[], &["example.org"], &[(3, 0, 0, vec![])]));
    }

    #[test]
    fn dane_ta_needs_the_path_and_the_name() {
        let ta = ca("DANE TA");
        let ta_key_spki = ta.issuer.key().subject_public_key_info();
        let cert = leaf(Some(&ta), dns_names(&["example.org"]));
        let chain = [cert.clone(), ta.der.clone()];
        let by_cert = (2, 0, 1, digest(1, ta.der.as_ref()));
        let by_key = (2, 1, 2, digest(2, &ta_key_spki));
        for record in [&by_cert, &by_key] {
            assert!(dane_matches(
                &chain,
                &["example.org"],
                std::slice::from_ref(record)
            ));
            assert!(!dane_matches(
                &chain,
                &["example.net"],
                std::slice::from_ref(record)
            ));
            // The SRV target may be a second reference name (RFC 7673).
            assert!(dane_matches(
                &chain,
                &["example.net", "example.org"],
                std::slice::from_ref(record)
            ));
            // The TA is not in the chain: a digest cannot stand in for it.
            assert!(!dane_matches(
                &chain[..1],
                &["example.org"],
                std::slice::from_ref(record)
            ));
        }
        // "2 1 0": the full public key of an absent TA (RFC 7671 §5.2.2).
        let full_key = (2, 1, 0, ta_key_spki.clone());
        assert!(dane_matches(
            &chain[..1],
            &["example.org"],
            std::slice::from_ref(&full_key)
        ));
        assert!(!dane_matches(&chain[..1], &["example.net"], &[full_key]));
        // A TA record naming the end entity itself is no trust anchor for it.
        let ee_as_ta = (2, 0, 1, digest(1, cert.as_ref()));
        assert!(!dane_matches(&chain, &["example.org"], &[ee_as_ta]));
        // A certificate from another issuer appended to the chain and matched does not help.
        let other = self::ca("Other");
        let stranger = leaf(Some(&other), dns_names(&["example.org"]));
        let record = (2, 0, 1, digest(1, other.der.as_ref()));
        assert!(!dane_matches(
            &[cert.clone(), other.der.clone()],
            &["example.org"],
            std::slice::from_ref(&record)
        ));
        assert!(dane_matches(
            &[stranger, other.der.clone()],
            &["example.org"],
            &[record]
        ));
        // An expired end entity under a DANE-TA is refused.
        let expired = leaf(Some(&ta), |p| {
            p.subject_alt_names = vec![SanType::DnsName("example.org".try_into().expect("IA5"))];
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        assert!(!dane_matches(
            &[expired, ta.der.clone()],
            &["example.org"],
            &[by_cert]
        ));
    }

    /// Writes a CA-signed certificate and key for `host` and loads a store serving it.
    fn store_for(ca: &Ca, host: &str) -> Arc<CertStore> {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![host.to_string()]).expect("params");
        let cert = params.signed_by(&key, &ca.issuer).expect("cert");
        let certificate = temp_file(&format!("{host}.crt"), &cert.pem());
        let key = temp_file(&format!("{host}.key"), &key.serialize_pem());
        let mut config = canto_core::Config {
            data_dir: std::env::temp_dir().join(format!("canto-verify-{}", std::process::id())),
            hosts: vec![host.to_string()],
            ..canto_core::Config::default()
        };
        config.certificates.insert(
            host.to_string(),
            canto_core::config::CertificateConfig { certificate, key },
        );
        CertStore::load(&config).expect("store")
    }

    struct Seen {
        peer_chain: Option<Vec<CertificateDer<'static>>>,
        alpn: Option<Vec<u8>>,
        sni: Option<String>,
    }

    /// One TLS handshake over TCP on loopback; what the server and the client saw.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        remote: &str,
    ) -> (Seen, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            tls.write_all(b"x").await.expect("write");
            tls.flush().await.expect("flush");
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.expect("read");
            let (_, conn) = tls.get_ref();
            Seen {
                peer_chain: conn.peer_certificates().map(|c| c.to_vec()),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                sni: conn.server_name().map(str::to_owned),
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = sni_name(remote).expect("server name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.expect("read");
        tls.write_all(b"y").await.expect("write");
        tls.flush().await.expect("flush");
        let (_, conn) = tls.get_ref();
        let client_seen = Seen {
            peer_chain: conn.peer_certificates().map(|c| c.to_vec()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            sni: None,
        };
        (server_task.await.expect("server task"), client_seen)
    }

    #[tokio::test]
    async fn handshake_shows_both_certificates() {
        let ca = ca("Federation CA");
        let a = store_for(&ca, "a.test");
        let b = store_for(&ca, "b.test");
        let verifier = Verifier::from_roots(std::slice::from_ref(&ca.der)).expect("verifier");

        // b.test connects to a.test by direct TLS.
        let (server, client) = handshake(
            server_config(&a),
            client_config(&b, "b.test", true),
            "a.test",
        )
        .await;
        let from_client = server.peer_chain.expect("client certificate");
        let from_server = client.peer_chain.expect("server certificate");
        assert_eq!(server.sni.as_deref(), Some("a.test"));
        assert_eq!(server.alpn.as_deref(), Some(ALPN_XMPP_SERVER));
        assert_eq!(client.alpn.as_deref(), Some(ALPN_XMPP_SERVER));
        let b_cert = b.certified_key("b.test").expect("b key").cert[0].clone();
        let a_cert = a.certified_key("a.test").expect("a key").cert[0].clone();
        assert_eq!(from_client[0], b_cert);
        assert_eq!(from_server[0], a_cert);
        assert_eq!(verifier.verify(&from_client, "b.test"), Ok(()));
        assert_eq!(verifier.verify(&from_server, "a.test"), Ok(()));
        assert!(verifier.verify(&from_client, "a.test").is_err());

        // STARTTLS (no ALPN), from a domain we hold no certificate for: the handshake still
        // succeeds, without a client certificate, and a self-signed server is still accepted.
        let self_signed = CertStore::ephemeral(&["c.test".into()]).expect("store");
        let (server, client) = handshake(
            server_config(&self_signed),
            client_config(&b, "unknown.test", false),
            "c.test",
        )
        .await;
        assert!(server.peer_chain.is_none());
        assert_eq!(server.alpn, None);
        let from_server = client.peer_chain.expect("server certificate");
        assert!(name_matches(&from_server[0], "c.test"));
        assert!(matches!(
            verifier.verify(&from_server, "c.test"),
            Err(CertError::Untrusted(_))
        ));
    }
}

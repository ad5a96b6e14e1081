//! Client-to-server stream negotiation pieces, sans I/O (RFC 6120 §4–§7): the stream header
//! check, the features each stage offers, the elements each stage accepts, and resource binding.

use canto_stanza::{Condition, StanzaError, StreamCondition, StreamError, ns};
use canto_xml::{Element, escape};

use crate::sasl::{ChannelBindings, Mechanism};

/// What a valid client stream header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The served host named in `to`, normalized.
    pub host: String,
    /// `xml:lang`, if given.
    pub lang: Option<String>,
}

/// Checks a client's stream header (RFC 6120 §4.7, §4.9.3). `serves` says whether a normalized
/// domain is a virtual host here.
pub fn check_header(
    header: &Element,
    serves: impl Fn(&str) -> bool,
) -> Result<Header, StreamError> {
    // §4.9.3.10: the stream namespace and the content namespace must be the right ones.
    if header.ns() != ns::STREAMS || header.name() != "stream" {
        return Err(
            StreamError::new(StreamCondition::InvalidNamespace).with_text("not an XMPP stream")
        );
    }
    if header.attr("xmlns") != Some(ns::CLIENT) {
        return Err(StreamError::new(StreamCondition::InvalidNamespace)
            .with_text("the content namespace must be jabber:client"));
    }
    // §4.7.5, §4.9.3.25: only version 1.x is supported.
    let major = header
        .attr("version")
        .and_then(|v| v.split('.').next())
        .map(str::trim);
    if major != Some("1") {
        return Err(StreamError::new(StreamCondition::UnsupportedVersion)
            .with_text("version 1.0 is required"));
    }
    // §4.7.4: a language tag (RFC 5646 shape: alphanumeric subtags joined by '-').
    let lang = header.attr("xml:lang").map(str::to_string);
    if let Some(l) = &lang {
        let ok = !l.is_empty()
            && l.len() <= 35
            && l.split('-').all(|p| {
                !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if !ok {
            return Err(StreamError::new(StreamCondition::InvalidXml).with_text("invalid xml:lang"));
        }
    }
    let Some(to) = header.attr("to") else {
        // Prosody and ejabberd both require `to` on c2s headers.
        return Err(StreamError::new(StreamCondition::ImproperAddressing)
            .with_text("a 'to' attribute is required on stream headers"));
    };
    // §4.9.3.6: host-unknown for a domain not served here; domains compare after nameprep.
    let host = canto_stanza::jid::normalize_domain(to)
        .filter(|h| serves(h))
        .ok_or_else(|| StreamError::new(StreamCondition::HostUnknown))?;
    Ok(Header { host, lang })
}

/// The server's stream header (RFC 6120 §4.7). Written by hand because it is never closed.
pub fn response_header(host: &str, stream_id: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' version='1.0' xml:lang='en'>",
        escape(stream_id),
        escape(host)
    )
    .into_bytes()
}

/// The closing tag.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// Where a connection is in negotiation, for choosing features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before authentication.
    Unauthenticated {
        /// The stream is encrypted.
        tls: bool,
        /// STARTTLS can still be offered on this connection.
        starttls_available: bool,
        /// `require_encryption` from config.
        require_encryption: bool,
    },
    /// Authenticated: resource binding is next.
    Authenticated,
}

/// The mechanisms offered at this stage, strongest first (RFC 6120 §6.4.1). PLUS variants need
/// channel-binding data; nothing is offered on plaintext when encryption is required
/// (RFC 6120 §5.3.1, §13.8).
pub fn offered_mechanisms(
    tls: bool,
    require_encryption: bool,
    cb: &ChannelBindings,
) -> Vec<Mechanism> {
    if !tls && require_encryption {
        return Vec::new();
    }
    Mechanism::ALL
        .iter()
        .copied()
        .filter(|m| !m.is_plus() || (tls && cb.any()))
        .collect()
}

/// `<stream:features/>` for a stage.
pub fn features(stage: Stage, cb: &ChannelBindings) -> Element {
    let mut f = Element::new("features", ns::STREAMS);
    match stage {
        Stage::Unauthenticated {
            tls,
            starttls_available,
            require_encryption,
        } => {
            if !tls && starttls_available {
                // RFC 6120 §5.4.1: mandatory-to-negotiate when encryption is required.
                let mut st = Element::new("starttls", ns::TLS);
                if require_encryption {
                    st.push_child(Element::new("required", ns::TLS));
                }
                f.push_child(st);
            }
            let mechs = offered_mechanisms(tls, require_encryption, cb);
            if !mechs.is_empty() {
                let mut m = Element::new("mechanisms", ns::SASL);
                for mech in &mechs {
                    m.push_child(Element::new("mechanism", ns::SASL).with_text(mech.name()));
                }
                f.push_child(m);
                if mechs.iter().any(|m| m.is_plus()) {
                    // XEP-0440: say which channel-binding types the server supports.
                    let mut types = Element::new("sasl-channel-binding", "urn:xmpp:sasl-cb:0");
                    for name in cb.names() {
                        types.push_child(
                            Element::new("channel-binding", "urn:xmpp:sasl-cb:0")
                                .with_attr("type", name),
                        );
                    }
                    f.push_child(types);
                }
            }
        }
        Stage::Authenticated => {
            f.push_child(Element::new("bind", ns::BIND));
            // RFC 6121 Appendix E / draft-cridland-xmpp-session: the session feature is optional.
            f.push_child(
                Element::new("session", ns::SESSION)
                    .with_child(Element::new("optional", ns::SESSION)),
            );
            // RFC 6121 §2.6.1: roster versioning; §3.4: subscription pre-approval.
            f.push_child(Element::new("ver", "urn:xmpp:features:rosterver"));
            f.push_child(Element::new("sub", "urn:xmpp:features:pre-approval"));
            // Stream management (XEP-0198) and client state indication (XEP-0352) are
            // added by their modules (`smacks`, `csi`) when enabled.
        }
    }
    f
}

/// A resource-binding request (RFC 6120 §7.5–§7.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindRequest {
    /// The client asked for this resource (already resourceprep'd).
    Resource(String),
    /// The server is to generate one (§7.6).
    Generate,
}

/// Reads an IQ set carrying `<bind/>`. `Ok(None)` if the IQ is not a bind request.
pub fn parse_bind(iq: &Element) -> Result<Option<BindRequest>, StanzaError> {
    let Some(bind) = iq.get_child("bind", ns::BIND) else {
        return Ok(None);
    };
    if iq.attr("type") != Some("set") {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    match bind.get_child("resource", ns::BIND) {
        None => Ok(Some(BindRequest::Generate)),
        Some(r) => {
            let text = r.text();
            if text.is_empty() {
                return Ok(Some(BindRequest::Generate));
            }
            // §7.7.2.1: a resource that fails resourceprep is bad-request. Bidi overrides
            // and control characters are refused by the profile.
            if text
                .chars()
                .any(|c| c.is_control() || ('\u{202A}'..='\u{202E}').contains(&c))
            {
                return Err(StanzaError::new(Condition::BadRequest).with_text("invalid resource"));
            }
            canto_stanza::jid::normalize_resource(&text)
                .map(|r| Some(BindRequest::Resource(r)))
                .ok_or_else(|| {
                    StanzaError::new(Condition::BadRequest).with_text("invalid resource")
                })
        }
    }
}

/// The bind result payload (§7.6.1).
pub fn bind_result(full_jid: &str) -> Element {
    Element::new("bind", ns::BIND).with_child(Element::new("jid", ns::BIND).with_text(full_jid))
}

/// A SASL `<failure/>` (RFC 6120 §6.5).
pub fn sasl_failure(condition: &str) -> Element {
    Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(attrs: &[(&str, &str)]) -> Element {
        let mut h = Element::new("stream", ns::STREAMS);
        for (k, v) in attrs {
            h.set_attr(*k, *v);
        }
        h
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("xmlns", ns::CLIENT),
            ("to", "example.test"),
            ("version", "1.0"),
        ]
    }

    fn cond(attrs: &[(&str, &str)]) -> Option<StreamCondition> {
        check_header(&header(attrs), |h| h == "example.test")
            .err()
            .map(|e| e.condition)
    }

    #[test]
    fn header_checks() {
        assert_eq!(cond(&good()), None);
        let with = |k: &'static str, v: &'static str| {
            let mut a = good();
            a.retain(|(x, _)| *x != k);
            a.push((k, v));
            a
        };
        assert_eq!(
            cond(&with("xmlns", ns::SERVER)),
            Some(StreamCondition::InvalidNamespace)
        );
        assert_eq!(
            cond(&with("version", "2.0")),
            Some(StreamCondition::UnsupportedVersion)
        );
        assert_eq!(
            cond(&with("to", "unknown.test")),
            Some(StreamCondition::HostUnknown)
        );
        assert_eq!(
            cond(&with("xml:lang", &*"x".repeat(36).leak())),
            Some(StreamCondition::InvalidXml)
        );
        let mut no_to = good();
        no_to.retain(|(k, _)| *k != "to");
        assert_eq!(cond(&no_to), Some(StreamCondition::ImproperAddressing));
        let mut no_version = good();
        no_version.retain(|(k, _)| *k != "version");
        assert_eq!(cond(&no_version), Some(StreamCondition::UnsupportedVersion));
        // Case is folded: Example.TEST is example.test.
        let h = check_header(&header(&with("to", "Example.TEST")), |h| {
            h == "example.test"
        });
        assert_eq!(h.ok().map(|h| h.host), Some("example.test".into()));
        let wrong_root = Element::new("foo", ns::STREAMS).with_attr("xmlns", ns::CLIENT);
        assert_eq!(
            check_header(&wrong_root, |_| true)
                .err()
                .map(|e| e.condition),
            Some(StreamCondition::InvalidNamespace)
        );
    }

    #[test]
    fn no_mechanisms_before_tls_when_required() {
        let cb = ChannelBindings::default();
        assert!(offered_mechanisms(false, true, &cb).is_empty());
        let plain_ok = offered_mechanisms(false, false, &cb);
        assert!(plain_ok.contains(&Mechanism::Plain));
        assert!(!plain_ok.iter().any(|m| m.is_plus()));
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        let tls = offered_mechanisms(true, true, &cb);
        assert_eq!(tls.first(), Some(&Mechanism::ScramSha256Plus));
        let f = features(
            Stage::Unauthenticated {
                tls: false,
                starttls_available: true,
                require_encryption: true,
            },
            &cb,
        );
        assert!(
            f.get_child("starttls", ns::TLS)
                .is_some_and(|s| s.has_child("required", ns::TLS))
        );
        assert!(!f.has_child("mechanisms", ns::SASL));
    }

    #[test]
    fn bind_requests() {
        let iq = |inner: Element| {
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_child(inner)
        };
        let b = Element::new("bind", ns::BIND);
        assert_eq!(parse_bind(&iq(b.clone())), Ok(Some(BindRequest::Generate)));
        let r = b
            .clone()
            .with_child(Element::new("resource", ns::BIND).with_text("Phone"));
        assert_eq!(
            parse_bind(&iq(r)),
            Ok(Some(BindRequest::Resource("Phone".into())))
        );
        for bad in ["a\u{0}b", "a\u{202E}b", "x\u{7}"] {
            let r = b
                .clone()
                .with_child(Element::new("resource", ns::BIND).with_text(bad));
            assert_eq!(
                parse_bind(&iq(r)).err().map(|e| e.condition),
                Some(Condition::BadRequest),
                "{bad:?}"
            );
        }
        let other = Element::new("iq", ns::CLIENT).with_child(Element::new("ping", ns::PING));
        assert_eq!(parse_bind(&other), Ok(None));
    }
}

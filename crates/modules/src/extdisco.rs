//! `extdisco`: XEP-0215 External Service Discovery (Prosody's `mod_turn_external`): STUN and
//! TURN services from configuration (`[[external_services]]`), with time-limited TURN
//! credentials derived from a secret shared with the TURN server (the "TURN REST API"
//! scheme: username `expiry:user`, password base64(HMAC-SHA1(secret, username)), which coturn
//! checks with `use-auth-secret`).

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use canto_core::module::{ModuleConfig, Section, SectionInfo};
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{Condition, IqType, StanzaError, datetime};
use canto_xml::Element;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::expect_payload;

/// `urn:xmpp:extdisco:2`.
pub const NS: &str = "urn:xmpp:extdisco:2";

/// The module.
pub struct ExtDisco;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0215",
    version: "1.0.0",
    title: "External Service Discovery",
}];

impl Module for ExtDisco {
    fn name(&self) -> &'static str {
        "extdisco"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        ctx.add_feature(NS);
        let services = Services {
            config: ctx.section::<ExternalServices>()?,
        };
        ctx.hook_iq(IqTarget::Host, IqType::Get, NS, Arc::new(services))?;
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![ExternalServices::info()]
    }
}

/// `[[external_services]]`: one STUN or TURN service (XEP-0215 §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// `stun`, `turn`, `stuns` or `turns`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `udp` or `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Shared secret for time-limited credentials (the TURN REST API scheme coturn's
    /// `use-auth-secret` checks); none for services without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Lifetime of generated credentials, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

fn default_ttl() -> u64 {
    86_400
}

/// The whole `[[external_services]]` array.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExternalServices(pub Vec<ExternalService>);

impl ModuleConfig for ExternalServices {
    const SECTION: &'static str = "external_services";
    const DOCS: &'static [(&'static str, &'static str)] = &[(
        "",
        "STUN/TURN services for clients (XEP-0215, module extdisco), e.g.\n[[external_services]] type = \"turn\", host = \"turn.example.org\", port = 3478,\ntransport = \"udp\", secret = \"shared-with-coturn\", ttl = 86400",
    )];

    fn validate(&self) -> Result<(), String> {
        for (i, svc) in self.0.iter().enumerate() {
            // XEP-0215 §4: the service types and transports clients understand.
            if !matches!(svc.kind.as_str(), "stun" | "stuns" | "turn" | "turns") {
                return Err(format!(
                    "[{i}].type = {:?}: expected stun, stuns, turn or turns",
                    svc.kind
                ));
            }
            if let Some(t) = &svc.transport
                && !matches!(t.as_str(), "udp" | "tcp")
            {
                return Err(format!("[{i}].transport = {t:?}: expected udp or tcp"));
            }
        }
        Ok(())
    }
}

/// TURN REST API credentials valid until `expires` (seconds since the epoch) for `user`.
pub fn turn_credentials(secret: &str, user: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn service_element(s: &ExternalService, user: &str, now_secs: u64) -> Element {
    let mut e = Element::new("service", NS)
        .with_attr("type", s.kind.clone())
        .with_attr("host", s.host.clone())
        .with_attr("port", s.port.to_string());
    if let Some(t) = &s.transport {
        e.set_attr("transport", t.clone());
    }
    if let Some(secret) = &s.secret {
        // XEP-0215 §3.1: credentials with an expiry; `restricted` says they are short-lived.
        let expires = now_secs + s.ttl;
        let (username, password) = turn_credentials(secret, user, expires);
        e.set_attr("username", username);
        e.set_attr("password", password);
        e.set_attr("expires", datetime::from_millis((expires * 1000) as i64));
        e.set_attr("restricted", "1");
    }
    e
}

struct Services {
    config: Section<ExternalServices>,
}

#[async_trait]
impl IqHandler for Services {
    /// XEP-0215 §3.1 (all services, or of one `type`) and §3.2 (credentials for one service).
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        let config = self.config.get();
        let user = req.from.to_bare().to_string();
        let now = u64::try_from(datetime::now_millis() / 1000).unwrap_or(0);
        match req.payload.name() {
            "services" => {
                let wanted = req.payload.attr("type");
                let mut out = Element::new("services", NS);
                if let Some(t) = wanted {
                    out.set_attr("type", t);
                }
                for s in config
                    .0
                    .iter()
                    .filter(|s| wanted.is_none_or(|t| t == s.kind))
                {
                    out.push_child(service_element(s, &user, now));
                }
                Ok(Some(out))
            }
            "credentials" => {
                let asked = req
                    .payload
                    .get_child("service", NS)
                    .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
                let found = config.0.iter().find(|s| {
                    Some(s.host.as_str()) == asked.attr("host")
                        && Some(s.kind.as_str()) == asked.attr("type")
                        && asked.attr("port").is_none_or(|p| p == s.port.to_string())
                });
                // §3.2: an unknown service is item-not-found.
                let s = found.ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
                Ok(Some(
                    Element::new("credentials", NS).with_child(service_element(s, &user, now)),
                ))
            }
            _ => {
                expect_payload(&req, "services")?;
                Err(StanzaError::new(Condition::BadRequest))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, get, result_xml, server_with_config};

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let (u, p) = turn_credentials("secret", "alice@example.test", 1_700_000_000);
        assert_eq!(u, "1700000000:alice@example.test");
        // HMAC-SHA1 of the username, base64: 20 bytes → 28 characters.
        assert_eq!(p.len(), 28);
        assert_ne!(
            p,
            turn_credentials("other", "alice@example.test", 1_700_000_000).1
        );
        assert_eq!(
            p,
            turn_credentials("secret", "alice@example.test", 1_700_000_000).1
        );
    }

    #[tokio::test]
    async fn services_and_credentials() {
        let mut config = canto_core::Config {
            hosts: vec![HOST.into()],
            modules: vec!["extdisco".into()],
            ..Default::default()
        };
        let services = ExternalServices(vec![
            ExternalService {
                kind: "stun".into(),
                host: "stun.example.test".into(),
                port: 3478,
                transport: Some("udp".into()),
                secret: None,
                ttl: 60,
            },
            ExternalService {
                kind: "turn".into(),
                host: "turn.example.test".into(),
                port: 3478,
                transport: Some("udp".into()),
                secret: Some("s3cret".into()),
                ttl: 60,
            },
        ]);
        config
            .set_section_value("external_services", &services)
            .unwrap_or_else(|e| panic!("{e}"));
        let s = server_with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let all = result_xml(
            get(
                &s,
                IqTarget::Host,
                "alice@example.test/a",
                HOST,
                Element::new("services", NS),
            )
            .await,
        );
        assert!(
            all.contains("host='stun.example.test'") && all.contains("host='turn.example.test'"),
            "{all}"
        );
        assert!(
            all.contains("username='") && all.contains("restricted='1'"),
            "{all}"
        );
        let stun = result_xml(
            get(
                &s,
                IqTarget::Host,
                "alice@example.test/a",
                HOST,
                Element::new("services", NS).with_attr("type", "stun"),
            )
            .await,
        );
        assert!(
            !stun.contains("turn.example.test") && !stun.contains("password"),
            "{stun}"
        );
        let ask = Element::new("credentials", NS).with_child(
            Element::new("service", NS)
                .with_attr("host", "nope.example.test")
                .with_attr("type", "turn"),
        );
        assert_eq!(
            result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, ask).await),
            "error item-not-found"
        );
    }
}

//! `version`: XEP-0092 Software Version (Prosody's `mod_version`).

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, SectionInfo};
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{IqType, StanzaError, ns};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use crate::expect_payload;

/// The module.
pub struct Version;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0092",
    version: "1.1",
    title: "Software Version",
}];

/// The software name reported.
pub const SOFTWARE_NAME: &str = "Canto";

/// The software version reported: this crate's version, which is the workspace version.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0092 §4: support is advertised as the `jabber:iq:version` disco feature.
        ctx.add_feature(ns::VERSION);
        // XEP-0092 §2 defines only the get; a set has no handler and the router answers
        // service-unavailable.
        let get = VersionGet {
            config: ctx.section::<VersionConfig>()?,
        };
        ctx.hook_iq(IqTarget::Host, IqType::Get, ns::VERSION, Arc::new(get))?;
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![VersionConfig::info()]
    }
}

/// `[version]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionConfig {
    /// Whether to reveal the operating system in XEP-0092 answers.
    pub show_os: bool,
}

impl ModuleConfig for VersionConfig {
    const SECTION: &'static str = "version";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("", "Software version (XEP-0092)."),
        ("show_os", "Reveal the operating system in version answers."),
    ];
}

/// Answers `<query xmlns='jabber:iq:version'/>` gets addressed to the server.
struct VersionGet {
    config: Section<VersionConfig>,
}

#[async_trait]
impl IqHandler for VersionGet {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "query")?;
        // XEP-0092 §2: <name/> and <version/> are REQUIRED in a result, <os/> OPTIONAL.
        let mut query = Element::new("query", ns::VERSION)
            .with_child(Element::new("name", ns::VERSION).with_text(SOFTWARE_NAME))
            .with_child(Element::new("version", ns::VERSION).with_text(SOFTWARE_VERSION));
        // XEP-0092 §5: revealing the operating system MUST be something an administrator can
        // disable; here it is off unless `version.show_os` turns it on. Read per request so a
        // reload takes effect.
        if self.config.get().show_os {
            query.push_child(Element::new("os", ns::VERSION).with_text(std::env::consts::OS));
        }
        Ok(Some(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, call, get, result_xml, server, server_with_config};
    use canto_core::Config;

    fn query() -> Element {
        Element::new("query", ns::VERSION)
    }

    async fn server_showing_os(show_os: bool) -> Arc<canto_core::Server> {
        let mut config = Config {
            hosts: vec![HOST.into()],
            modules: vec!["version".into()],
            ..Default::default()
        };
        config
            .set_section("version", &format!("show_os = {show_os}"))
            .unwrap_or_else(|e| panic!("{e}"));
        server_with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn version_without_os_by_default() {
        let s = server(&["version"]).await;
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, query()).await);
        assert_eq!(
            got,
            format!(
                "<query xmlns='jabber:iq:version'><name>Canto</name>\
                 <version>{}</version></query>",
                env!("CARGO_PKG_VERSION")
            )
        );
        let s = server_showing_os(false).await;
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, query()).await);
        assert!(!got.contains("<os>"), "{got}");
    }

    #[tokio::test]
    async fn version_with_os_when_configured() {
        let s = server_showing_os(true).await;
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, query()).await);
        assert_eq!(
            got,
            format!(
                "<query xmlns='jabber:iq:version'><name>Canto</name>\
                 <version>{}</version><os>{}</os></query>",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS
            )
        );
    }

    #[tokio::test]
    async fn version_follows_a_config_reload() {
        let s = server_showing_os(false).await;
        let mut config = (*s.config()).clone();
        config
            .set_section("version", "show_os = true")
            .unwrap_or_else(|e| panic!("{e}"));
        s.reload_config(config).unwrap_or_else(|e| panic!("{e}"));
        let got = result_xml(get(&s, IqTarget::Host, "alice@example.test/a", HOST, query()).await);
        assert!(got.contains("<os>"), "{got}");
    }

    #[tokio::test]
    async fn version_set_is_not_handled() {
        let s = server(&["version"]).await;
        let got = result_xml(
            call(
                &s,
                IqTarget::Host,
                IqType::Set,
                "alice@example.test/a",
                HOST,
                query(),
            )
            .await,
        );
        assert_eq!(got, "no handler");
        assert_eq!(s.modules().features(), [ns::VERSION.to_string()]);
    }
}

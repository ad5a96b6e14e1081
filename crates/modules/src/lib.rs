//! Canto's feature modules, modelled on Prosody's `mod_*` plugins. Each file implements one
//! protocol; [`all`] is the one list the server loads from (config `modules = [...]` picks).
#![forbid(unsafe_code)]

use std::sync::Arc;

use canto_core::{IqRequest, Module, Spec};
use canto_stanza::{Condition, StanzaError};

pub mod blocking;
pub mod bookmarks;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod last;
pub mod mam;
pub mod muc;
pub mod ping;
pub mod private;
pub mod pubsub;
pub mod register;
pub mod roster;
pub mod smacks;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod vcard_pep;
pub mod version;

#[cfg(test)]
mod test_support;

/// Every module Canto ships, in the order the README lists them.
pub fn all() -> Vec<Arc<dyn Module>> {
    vec![
        Arc::new(disco::Disco),
        Arc::new(ping::Ping),
        Arc::new(version::Version),
        Arc::new(time::Time),
        Arc::new(roster::Roster),
        // pep before the modules that build on it (vcard, bookmarks): modules load in this
        // order.
        Arc::new(pubsub::pep::Pep),
        Arc::new(pubsub::service::Pubsub),
        Arc::new(vcard::Vcard),
        Arc::new(private::Private),
        Arc::new(bookmarks::Bookmarks),
        Arc::new(blocking::Blocking),
        Arc::new(carbons::Carbons),
        Arc::new(mam::Mam),
        Arc::new(muc::Muc),
        Arc::new(last::Last),
        Arc::new(extdisco::ExtDisco),
        Arc::new(register::Register),
        Arc::new(smacks::Smacks),
        Arc::new(csi::Csi),
        Arc::new(upload::Upload),
    ]
}

/// Every module's configuration sections, in module order (for `canto config example`).
pub fn config_sections() -> Vec<canto_core::module::SectionInfo> {
    all().iter().flat_map(|m| m.config_sections()).collect()
}

/// `(module name, specification)` for every protocol a module implements: the README table and
/// the DOAP file are generated from this.
pub fn supported_specs() -> Vec<(&'static str, Spec)> {
    all()
        .iter()
        .flat_map(|m| {
            let name = m.name();
            m.specs().iter().map(move |s| (name, *s))
        })
        .collect()
}

/// Checks that the payload is the element `name` a handler expects in its namespace. Anything
/// else in that namespace is a payload we do not understand: `service-unavailable`
/// (RFC 6120 §8.4).
pub(crate) fn expect_payload(req: &IqRequest<'_>, name: &str) -> Result<(), StanzaError> {
    if req.payload.name() == name {
        Ok(())
    } else {
        Err(StanzaError::new(Condition::ServiceUnavailable))
    }
}

/// Whether the sender is the account the request is addressed to (same bare JID).
pub(crate) fn from_owner(req: &IqRequest<'_>) -> bool {
    req.from.to_bare() == req.to.to_bare()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::server_with_modules;

    #[test]
    fn module_names_are_unique_and_match_the_default_config() {
        let names: Vec<&str> = all().iter().map(|m| m.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        // The default configuration enables every module by name; each must exist.
        for configured in canto_core::Config::default().modules {
            assert!(names.contains(&configured.as_str()), "{configured}");
        }
    }

    #[test]
    fn every_module_section_is_documented_key_by_key_and_its_defaults_parse() {
        let sections = config_sections();
        let names: Vec<&str> = sections.iter().map(|s| s.name).collect();
        for want in [
            "version",
            "vcard",
            "private",
            "blocking",
            "mam",
            "contact",
            "external_services",
            "upload",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for info in &sections {
            assert!(
                info.docs.iter().any(|(k, _)| k.is_empty()),
                "{} undocumented",
                info.name
            );
            let defaults = (info.defaults)().unwrap_or_else(|| panic!("{} defaults", info.name));
            assert_eq!((info.check)(&defaults), Ok(()), "{}", info.name);
            for key in defaults.as_table().map(|t| t.keys()).into_iter().flatten() {
                assert!(
                    info.docs.iter().any(|(k, _)| k == key),
                    "{}.{key} undocumented",
                    info.name
                );
            }
        }
        // The example with every section parses back: the defaults of the core, and every
        // section accepted by its module.
        let ex = canto_core::Config::example_with(&sections);
        let parsed = canto_core::Config::parse(&ex).unwrap_or_else(|e| panic!("{e}\n{ex}"));
        assert_eq!(
            canto_core::module::check_sections(&parsed, &all()),
            Ok(()),
            "{ex}"
        );
        assert!(
            ex.contains("[vcard]\n") && ex.contains("max_bytes = 65536"),
            "{ex}"
        );
    }

    #[test]
    fn unknown_and_invalid_sections_are_refused_by_name() {
        let c =
            canto_core::Config::parse("[vcrad]\nmax_bytes = 1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            canto_core::module::check_sections(&c, &all()),
            Err("unknown configuration key `vcrad`".to_string())
        );
        let c =
            canto_core::Config::parse("[vcard]\nmax_byte = 1").unwrap_or_else(|e| panic!("{e}"));
        let e = canto_core::module::check_sections(&c, &all())
            .err()
            .unwrap_or_default();
        assert!(e.contains("`vcard`") && e.contains("max_byte"), "{e}");
        let c = canto_core::Config::parse(
            "[[external_services]]\ntype = \"ftp\"\nhost = \"h\"\nport = 1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = canto_core::module::check_sections(&c, &all())
            .err()
            .unwrap_or_default();
        assert!(e.contains("expected stun"), "{e}");
        // A server refuses to start with them, naming the key.
        let c =
            canto_core::Config::parse("[vcrad]\nmax_bytes = 1").unwrap_or_else(|e| panic!("{e}"));
        let e = canto_core::Server::new(c, canto_storage::Storage::memory(), &all()).err();
        assert_eq!(e.as_deref(), Some("unknown configuration key `vcrad`"));
    }

    /// The module API's boundary (Prosody's moduleapi): a module reaches storage only through
    /// the stores it opened (`ctx.open_kv`…) and the core's own methods, never the server's
    /// storage or session table directly. Rust cannot hide a public field from one crate only,
    /// so this reads the module sources (test code excepted).
    #[test]
    fn modules_reach_neither_the_storage_nor_the_session_table_directly() {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        let mut offenders = Vec::new();
        // Every file below src/, sub-directories (pubsub/) included.
        let mut files = Vec::new();
        let mut dirs = vec![dir];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{e}")) {
                let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(
            files.iter().any(|f| f.ends_with("pubsub/engine.rs")),
            "{files:?}"
        );
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name == "test_support.rs" || name == "lib.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, line) in code.lines().enumerate() {
                let l = line.trim_start();
                if l.starts_with("//") {
                    continue;
                }
                if l.contains(".storage") || l.contains(".sessions") {
                    offenders.push(format!("{name}:{}: {l}", i + 1));
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }

    #[test]
    fn supported_specs_lists_each_module_spec() {
        let specs = supported_specs();
        let ids: Vec<(&str, &str, &str)> =
            specs.iter().map(|(m, s)| (*m, s.id, s.version)).collect();
        assert_eq!(
            ids,
            vec![
                ("disco", "XEP-0030", "2.5.0"),
                ("disco", "XEP-0128", "1.0.1"),
                ("disco", "XEP-0157", "1.1.1"),
                ("ping", "XEP-0199", "2.0.1"),
                ("version", "XEP-0092", "1.1"),
                ("time", "XEP-0202", "2.0"),
                ("time", "XEP-0082", "1.1.1"),
                ("roster", "RFC 6121", "-"),
                ("pep", "XEP-0163", "1.2.2"),
                ("pep", "XEP-0223", "1.1.1"),
                ("pep", "XEP-0172", "1.1"),
                ("pep", "XEP-0384", "0.8.3"),
                ("pubsub", "XEP-0060", "1.26.0"),
                ("vcard", "XEP-0054", "1.2"),
                ("vcard", "XEP-0153", "1.1"),
                ("vcard", "XEP-0398", "1.0.0"),
                ("vcard", "XEP-0084", "1.1.4"),
                ("vcard", "XEP-0292", "0.12.0"),
                ("private", "XEP-0049", "1.2"),
                ("bookmarks", "XEP-0402", "1.2.0"),
                ("bookmarks", "XEP-0048", "1.2"),
                ("bookmarks", "XEP-0411", "1.0.0"),
                ("blocking", "XEP-0191", "1.3"),
                ("carbons", "XEP-0280", "1.0.1"),
                ("carbons", "XEP-0297", "1.0"),
                ("carbons", "XEP-0334", "0.3.0"),
                ("mam", "XEP-0313", "1.1.3"),
                ("mam", "XEP-0359", "0.7.0"),
                ("mam", "XEP-0059", "1.0"),
                ("mam", "XEP-0441", "0.2.0"),
                ("muc", "XEP-0045", "1.35.1"),
                ("muc", "XEP-0249", "1.2"),
                ("muc", "XEP-0410", "1.1.0"),
                ("muc", "XEP-0421", "0.2.0"),
                ("muc", "XEP-0425", "0.3.0"),
                ("last", "XEP-0012", "2.0"),
                ("extdisco", "XEP-0215", "1.0.0"),
                ("register", "XEP-0077", "2.4"),
                ("smacks", "XEP-0198", "1.6.1"),
                ("csi", "XEP-0352", "1.0.0"),
                ("upload", "XEP-0363", "1.1.0"),
            ]
        );
        assert!(specs.iter().all(|(_, s)| !s.title.is_empty()));
    }

    #[tokio::test]
    async fn unknown_module_name_is_refused_by_name() {
        let err = server_with_modules(&["disco", "nope"]).await.err();
        let msg = err.unwrap_or_default();
        assert!(msg.contains("\"nope\""), "{msg}");
    }

    #[tokio::test]
    async fn every_module_loads_together() {
        let names: Vec<&str> = all().iter().map(|m| m.name()).collect();
        let server = server_with_modules(&names).await;
        let loaded = server.as_ref().map(|s| s.modules().loaded().to_vec()).ok();
        assert_eq!(loaded, Some(names));
    }
}

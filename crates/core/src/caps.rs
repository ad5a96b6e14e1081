//! The server's own entity capabilities (XEP-0115), advertised in stream features. They are a
//! hash of what disco#info on the server answers — identities and features from the loaded
//! modules, and the XEP-0157 contact form from the configuration — so they are computed again
//! whenever the configuration is reloaded (a changed contact address changes the hash).

use canto_xml::Element;

use crate::config::Config;
use crate::module::ModuleTable;

/// XEP-0115 §6.3: the `<c/>` element for `modules` and `config`.
pub fn caps_element(modules: &ModuleTable, config: &Config) -> Element {
    let ids: Vec<canto_proto::caps::Identity<'_>> = modules
        .identities()
        .iter()
        .map(|i| (i.category, i.kind, "", i.name.as_str()))
        .collect();
    let feats: Vec<&str> = modules.features().iter().map(String::as_str).collect();
    // XEP-0128 / XEP-0157: the contact form is part of disco#info when configured (module
    // disco), so it is part of the hash too (XEP-0115 §5.4 step 3).
    let c = &config.contact;
    let fields: Vec<(&str, Vec<&str>)> = [
        ("abuse-addresses", &c.abuse),
        ("admin-addresses", &c.admin),
        ("feedback-addresses", &c.feedback),
        ("sales-addresses", &c.sales),
        ("security-addresses", &c.security),
        ("status-addresses", &c.status),
        ("support-addresses", &c.support),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k, v.iter().map(String::as_str).collect()))
    .collect();
    let forms = if fields.is_empty() {
        Vec::new()
    } else {
        vec![("http://jabber.org/network/serverinfo", fields)]
    };
    Element::new("c", "http://jabber.org/protocol/caps")
        .with_attr("hash", "sha-1")
        .with_attr("node", canto_proto::caps::NODE)
        .with_attr(
            "ver",
            canto_proto::caps::ver_with_forms(&ids, &feats, &forms),
        )
}

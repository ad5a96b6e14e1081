//! The server's own entity capabilities (XEP-0115), advertised in stream features. They are a
//! hash of what disco#info on the server answers — identities and features from the loaded
//! modules, and their XEP-0128 forms (the XEP-0157 contact addresses of module disco, from its
//! configuration section) — so they are computed again whenever the configuration is reloaded
//! (a changed contact address changes the hash).

use canto_xml::Element;

use crate::module::ModuleTable;

/// XEP-0115 §6.3: the `<c/>` element for `modules` and `config`.
pub fn caps_element(modules: &ModuleTable) -> Element {
    let ids: Vec<canto_proto::caps::Identity<'_>> = modules
        .identities()
        .iter()
        .map(|i| (i.category, i.kind, "", i.name.as_str()))
        .collect();
    let feats: Vec<&str> = modules.features().iter().map(String::as_str).collect();
    // XEP-0128: the modules' extended-information forms (the XEP-0157 contact addresses of
    // module disco) are part of disco#info, so part of the hash too (XEP-0115 §5.4 step 3).
    let owned = modules.info_forms();
    let forms: Vec<canto_proto::caps::Form<'_>> = owned
        .iter()
        .map(|(form_type, fields)| {
            (
                form_type.as_str(),
                fields
                    .iter()
                    .map(|(var, values)| {
                        (var.as_str(), values.iter().map(String::as_str).collect())
                    })
                    .collect(),
            )
        })
        .collect();
    Element::new("c", "http://jabber.org/protocol/caps")
        .with_attr("hash", "sha-1")
        .with_attr("node", canto_proto::caps::NODE)
        .with_attr(
            "ver",
            canto_proto::caps::ver_with_forms(&ids, &feats, &forms),
        )
}

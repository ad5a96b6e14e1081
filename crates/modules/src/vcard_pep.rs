//! vcard-temp kept in step with PEP (module `vcard` with `pep` loaded):
//! - XEP-0398: a vCard PHOTO becomes a XEP-0084 avatar (data + metadata nodes), a client's
//!   XEP-0084 avatar becomes the vCard PHOTO, and available presence carries the XEP-0153 hash;
//! - XEP-0292: vCard4 over PEP (node `urn:xmpp:vcard4`, item `current`), converted to and from
//!   vcard-temp (Prosody's mod_vcard4 and mod_vcard_legacy).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::Engine as _;
use canto_core::module::{Section, SessionEvent, SessionHook};
use canto_core::stores::KvStore;
use canto_core::{Hooked, Origin, Server, StanzaEvent, StanzaHook};
use canto_stanza::{BareJid, FullJid, StanzaError};
use canto_xml::Element;
use sha1::Digest;

use crate::pubsub::engine::Event;
use crate::pubsub::pep::{self, PepListener, PepState};
use crate::vcard::{NS, VcardConfig};

/// XEP-0084 nodes.
pub const NS_AVATAR_DATA: &str = "urn:xmpp:avatar:data";
/// XEP-0084 metadata node.
pub const NS_AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0153 presence element.
pub const NS_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0292 node.
pub const NODE_VCARD4: &str = "urn:xmpp:vcard4";
/// RFC 6351 vCard XML namespace.
pub const NS_VCARD4: &str = "urn:ietf:params:xml:ns:vcard-4.0";

/// Shared by the conversions and the presence hook.
pub struct Sync {
    pub(crate) pep: Arc<PepState>,
    pub(crate) store: KvStore,
    pub(crate) config: Section<VcardConfig>,
    /// The current avatar hash per account seen online (XEP-0153), `None` for none.
    hashes: RwLock<HashMap<BareJid, Option<String>>>,
}

/// Fields of the converted nodes: the vCard is public (XEP-0054), so what it becomes is too.
fn open() -> Vec<(String, Vec<String>)> {
    vec![("pubsub#access_model".to_string(), vec!["open".to_string()])]
}

/// Lower-case hex SHA-1 (XEP-0084 §4.1 item ids, XEP-0153 hashes).
pub fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn text(el: &Element, name: &str) -> Option<String> {
    el.get_child(name, NS).map(Element::text)
}

impl Sync {
    /// A new state.
    pub fn new(pep: Arc<PepState>, store: KvStore, config: Section<VcardConfig>) -> Sync {
        Sync {
            pep,
            store,
            config,
            hashes: RwLock::default(),
        }
    }

    fn remember(&self, user: &BareJid, hash: Option<String>) {
        if let Ok(mut h) = self.hashes.write() {
            h.insert(user.clone(), hash);
        }
    }

    /// The account's avatar hash (XEP-0398 §4), from memory or the metadata node.
    async fn hash(&self, user: &BareJid) -> Option<String> {
        if let Some(h) = self.hashes.read().ok().and_then(|h| h.get(user).cloned()) {
            return h;
        }
        let h = pep::latest(&self.pep, user, NS_AVATAR_METADATA)
            .await
            .and_then(|(id, meta)| meta.get_child("info", NS_AVATAR_METADATA).map(|_| id));
        self.remember(user, h.clone());
        h
    }

    /// XEP-0398 §3.2 and XEP-0292: after a vcard-temp set, the avatar (data, then metadata)
    /// and the vCard4 item say the same.
    pub async fn from_vcard_temp(&self, server: &Arc<Server>, user: &BareJid, vcard: &Element) {
        let photo = vcard.get_child("PHOTO", NS).and_then(|p| {
            let b64: String = text(p, "BINVAL")?
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .ok()?;
            Some((b64, bytes, text(p, "TYPE")))
        });
        match photo {
            Some((b64, bytes, mime)) => {
                let id = sha1_hex(&bytes);
                let data = Element::new("data", NS_AVATAR_DATA).with_text(b64);
                let mut info = Element::new("info", NS_AVATAR_METADATA)
                    .with_attr("bytes", bytes.len().to_string())
                    .with_attr("id", &id);
                // XEP-0084 §4.2.1 requires a type; vCards mostly say it, PNG is the XEP's default.
                info.set_attr("type", mime.unwrap_or_else(|| "image/png".to_string()));
                let meta = Element::new("metadata", NS_AVATAR_METADATA).with_child(info);
                let ok = pep::publish_as_owner(
                    &self.pep,
                    server,
                    user,
                    NS_AVATAR_DATA,
                    &id,
                    data,
                    &open(),
                )
                .await
                .is_ok()
                    && pep::publish_as_owner(
                        &self.pep,
                        server,
                        user,
                        NS_AVATAR_METADATA,
                        &id,
                        meta,
                        &open(),
                    )
                    .await
                    .is_ok();
                if ok {
                    self.remember(user, Some(id));
                }
            }
            None => {
                // No photo any more: XEP-0084 §4.5 disables the avatar with empty metadata.
                if self.hash(user).await.is_some() {
                    let empty = Element::new("metadata", NS_AVATAR_METADATA);
                    let _ = pep::publish_as_owner(
                        &self.pep,
                        server,
                        user,
                        NS_AVATAR_METADATA,
                        "current",
                        empty,
                        &open(),
                    )
                    .await;
                    self.remember(user, None);
                }
            }
        }
        let v4 = to_vcard4(vcard);
        let _ = pep::publish_as_owner(&self.pep, server, user, NODE_VCARD4, "current", v4, &open())
            .await;
    }

    /// The stored vcard-temp, changed by `edit`, stored again.
    async fn edit_vcard(
        &self,
        user: &BareJid,
        edit: impl FnOnce(&mut Element),
    ) -> Result<(), StanzaError> {
        let mut card = crate::vcard::stored(&self.store, user)
            .await?
            .unwrap_or_else(|| Element::new("vCard", NS));
        edit(&mut card);
        crate::vcard::store(&self.store, self.config.get().max_bytes, user, &card).await
    }

    /// XEP-0398 §3.1: a client published avatar metadata: the vCard PHOTO follows (the info
    /// without a URL, whose data is in the data node and hashes to its id), or goes when the
    /// metadata is empty.
    async fn avatar_published(&self, user: &BareJid, meta: &Element) {
        let info = meta
            .children()
            .filter(|i| i.is("info", NS_AVATAR_METADATA))
            .find(|i| i.attr("url").is_none());
        let Some(info) = info else {
            if self
                .edit_vcard(user, |card| {
                    card.remove_children(|c| c.is("PHOTO", NS));
                })
                .await
                .is_ok()
            {
                self.remember(user, None);
            }
            return;
        };
        let Some(id) = info.attr("id") else { return };
        let data = pep::all_items(&self.pep, user, NS_AVATAR_DATA)
            .await
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d);
        let Some(b64) = data.map(|d| d.text()) else {
            return;
        };
        let b64: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
            return;
        };
        // §3.1: the image must hash to the id.
        if sha1_hex(&bytes) != id {
            return;
        }
        let mime = info.attr("type").unwrap_or("image/png").to_string();
        let photo = Element::new("PHOTO", NS)
            .with_child(Element::new("TYPE", NS).with_text(mime))
            .with_child(Element::new("BINVAL", NS).with_text(b64));
        if self
            .edit_vcard(user, |card| {
                card.remove_children(|c| c.is("PHOTO", NS));
                card.push_child(photo);
            })
            .await
            .is_ok()
        {
            self.remember(user, Some(id.to_string()));
        }
    }

    /// XEP-0292: a client published its vCard4: vcard-temp follows (its PHOTO and anything
    /// vCard4 does not map are kept).
    pub(crate) async fn vcard4_published(&self, user: &BareJid, v4: &Element) {
        let converted = from_vcard4(v4);
        let _ = self
            .edit_vcard(user, |card| {
                card.remove_children(|c| MAPPED.contains(&c.name()));
                for c in converted.children() {
                    card.push_child(c.clone());
                }
            })
            .await;
    }
}

/// vcard-temp elements the vCard4 conversion writes.
const MAPPED: &[&str] = &[
    "FN", "N", "NICKNAME", "BDAY", "URL", "TITLE", "ROLE", "NOTE", "EMAIL", "TEL", "JABBERID",
    "ORG", "ADR", "DESC",
];

fn v4_text(parent: &str, kind: &str, value: &str) -> Element {
    Element::new(parent, NS_VCARD4).with_child(Element::new(kind, NS_VCARD4).with_text(value))
}

/// vcard-temp → vCard4 (RFC 6351), the fields both have.
pub fn to_vcard4(card: &Element) -> Element {
    let mut v = Element::new("vcard", NS_VCARD4);
    if let Some(f) = text(card, "FN") {
        v.push_child(v4_text("fn", "text", &f));
    }
    if let Some(n) = card.get_child("N", NS) {
        let mut e = Element::new("n", NS_VCARD4);
        for (old, new) in [
            ("FAMILY", "surname"),
            ("GIVEN", "given"),
            ("MIDDLE", "additional"),
            ("PREFIX", "prefix"),
            ("SUFFIX", "suffix"),
        ] {
            if let Some(t) = text(n, old) {
                e.push_child(Element::new(new, NS_VCARD4).with_text(t));
            }
        }
        v.push_child(e);
    }
    for (old, new, kind) in [
        ("NICKNAME", "nickname", "text"),
        ("BDAY", "bday", "date"),
        ("URL", "url", "uri"),
        ("TITLE", "title", "text"),
        ("ROLE", "role", "text"),
        ("NOTE", "note", "text"),
        ("DESC", "note", "text"),
    ] {
        for c in card.children().filter(|c| c.is(old, NS)) {
            v.push_child(v4_text(new, kind, &c.text()));
        }
    }
    for e in card.children().filter(|c| c.is("EMAIL", NS)) {
        if let Some(u) = text(e, "USERID") {
            v.push_child(v4_text("email", "text", &u));
        }
    }
    for t in card.children().filter(|c| c.is("TEL", NS)) {
        if let Some(n) = text(t, "NUMBER") {
            v.push_child(v4_text("tel", "uri", &format!("tel:{n}")));
        }
    }
    for j in card.children().filter(|c| c.is("JABBERID", NS)) {
        v.push_child(v4_text("impp", "uri", &format!("xmpp:{}", j.text())));
    }
    for o in card.children().filter(|c| c.is("ORG", NS)) {
        if let Some(n) = text(o, "ORGNAME") {
            v.push_child(v4_text("org", "text", &n));
        }
    }
    for a in card.children().filter(|c| c.is("ADR", NS)) {
        let mut e = Element::new("adr", NS_VCARD4);
        for (old, new) in ADR {
            if let Some(t) = text(a, old) {
                e.push_child(Element::new(*new, NS_VCARD4).with_text(t));
            }
        }
        v.push_child(e);
    }
    v
}

const ADR: &[(&str, &str)] = &[
    ("POBOX", "pobox"),
    ("EXTADD", "ext"),
    ("STREET", "street"),
    ("LOCALITY", "locality"),
    ("REGION", "region"),
    ("PCODE", "code"),
    ("CTRY", "country"),
];

fn v4_value(el: &Element) -> Option<String> {
    el.children().next().map(Element::text)
}

/// vCard4 → vcard-temp elements (the inverse of [`to_vcard4`]), in a `<vCard/>`.
pub fn from_vcard4(v: &Element) -> Element {
    let mut card = Element::new("vCard", NS);
    let simple = |name: &str| Element::new(name, NS);
    for c in v.children().filter(|c| c.ns() == NS_VCARD4) {
        let value = v4_value(c);
        match (c.name(), value) {
            ("fn", Some(t)) => card.push_child(simple("FN").with_text(t)),
            ("n", _) => {
                let mut n = simple("N");
                for (new, old) in [
                    ("surname", "FAMILY"),
                    ("given", "GIVEN"),
                    ("additional", "MIDDLE"),
                    ("prefix", "PREFIX"),
                    ("suffix", "SUFFIX"),
                ] {
                    if let Some(t) = c.get_child(new, NS_VCARD4).map(Element::text) {
                        n.push_child(simple(old).with_text(t));
                    }
                }
                card.push_child(n);
            }
            ("nickname", Some(t)) => card.push_child(simple("NICKNAME").with_text(t)),
            ("bday", Some(t)) => card.push_child(simple("BDAY").with_text(t)),
            ("url", Some(t)) => card.push_child(simple("URL").with_text(t)),
            ("title", Some(t)) => card.push_child(simple("TITLE").with_text(t)),
            ("role", Some(t)) => card.push_child(simple("ROLE").with_text(t)),
            ("note", Some(t)) => card.push_child(simple("NOTE").with_text(t)),
            ("email", Some(t)) => {
                card.push_child(simple("EMAIL").with_child(simple("USERID").with_text(t)))
            }
            ("tel", Some(t)) => {
                let n = t.strip_prefix("tel:").unwrap_or(&t).to_string();
                card.push_child(simple("TEL").with_child(simple("NUMBER").with_text(n)))
            }
            ("impp", Some(t)) => {
                if let Some(j) = t.strip_prefix("xmpp:") {
                    card.push_child(simple("JABBERID").with_text(j));
                }
            }
            ("org", Some(t)) => {
                card.push_child(simple("ORG").with_child(simple("ORGNAME").with_text(t)))
            }
            ("adr", _) => {
                let mut a = simple("ADR");
                for (old, new) in ADR {
                    if let Some(t) = c.get_child(new, NS_VCARD4).map(Element::text) {
                        a.push_child(simple(old).with_text(t));
                    }
                }
                card.push_child(a);
            }
            _ => {}
        }
    }
    card
}

/// XEP-0292's IQ interface (Prosody's mod_vcard4): `<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'/>`
/// got from an account is the newest item of its `urn:xmpp:vcard4` node, read with the node's
/// access model; set by the owner, it is published there (PEP's defaults: presence access) and
/// vcard-temp follows.
pub struct Vcard4Iq(pub Arc<Sync>);

#[async_trait]
impl canto_core::IqHandler for Vcard4Iq {
    async fn handle(&self, req: canto_core::IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        if req.payload.name() != "vcard" {
            return Err(StanzaError::new(
                canto_stanza::Condition::ServiceUnavailable,
            ));
        }
        let owner = req.to.to_bare();
        if canto_stanza::IqType::of(req.stanza) == Some(canto_stanza::IqType::Set) {
            if req.from.to_bare() != owner {
                return Err(StanzaError::new(canto_stanza::Condition::Forbidden));
            }
            pep::publish_as_owner(
                &self.0.pep,
                req.server,
                &owner,
                NODE_VCARD4,
                "current",
                req.payload.clone(),
                &[],
            )
            .await?;
            self.0.vcard4_published(&owner, req.payload).await;
            return Ok(None);
        }
        pep::read_as(&self.0.pep, req.server, &owner, req.from, NODE_VCARD4)
            .await?
            .filter(|v| v.is("vcard", NS_VCARD4))
            .map(Some)
            .ok_or_else(|| StanzaError::new(canto_stanza::Condition::ItemNotFound))
    }
}

/// Follows clients' publications to the avatar and vCard4 nodes.
pub struct Follow(pub Arc<Sync>);

#[async_trait]
impl PepListener for Follow {
    async fn changed(&self, _server: &Arc<Server>, owner: &BareJid, event: &Event) {
        let Event::Published { node, .. } = event else {
            return;
        };
        if node != NS_AVATAR_METADATA && node != NODE_VCARD4 {
            return;
        }
        let Some((_, payload)) = pep::latest(&self.0.pep, owner, node).await else {
            return;
        };
        match node.as_str() {
            NS_AVATAR_METADATA if payload.is("metadata", NS_AVATAR_METADATA) => {
                self.0.avatar_published(owner, &payload).await
            }
            NODE_VCARD4 if payload.is("vcard", NS_VCARD4) => {
                self.0.vcard4_published(owner, &payload).await
            }
            _ => {}
        }
    }
}

/// XEP-0398 §4: available presence from a session carries the avatar hash: added when the
/// client sent no `<x xmlns='vcard-temp:x:update'/>` or one without `<photo/>`; a client's
/// own `<photo/>` (empty or not) is left as it is.
pub struct InjectHash(pub Arc<Sync>);

#[async_trait]
impl StanzaHook for InjectHash {
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked {
        let Origin::Session(session) = ev.origin else {
            return Hooked::Pass;
        };
        if ev.stanza.attr("type").is_some() {
            return Hooked::Pass;
        }
        if ev
            .stanza
            .get_child("x", NS_UPDATE)
            .is_some_and(|x| x.get_child("photo", NS_UPDATE).is_some())
        {
            return Hooked::Pass;
        }
        let Some(hash) = self.0.hash(&session.jid().to_bare()).await else {
            return Hooked::Pass;
        };
        let photo = Element::new("photo", NS_UPDATE).with_text(hash);
        match ev.stanza.get_child_mut("x", NS_UPDATE) {
            Some(x) => x.push_child(photo),
            None => ev
                .stanza
                .push_child(Element::new("x", NS_UPDATE).with_child(photo)),
        }
        Hooked::Pass
    }
}

/// Forgets an account's hash when its last session goes.
pub struct Forget(pub Arc<Sync>);

#[async_trait]
impl SessionHook for Forget {
    async fn on_session(&self, server: &Arc<Server>, session: &FullJid, event: SessionEvent<'_>) {
        if event == SessionEvent::Destroyed {
            let user = session.to_bare();
            if server.available_resources(&user).is_empty()
                && let Ok(mut h) = self.0.hashes.write()
            {
                h.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        canto_core::roster::decode_element(xml.as_bytes()).unwrap_or_else(|| panic!("{xml}"))
    }

    #[test]
    fn vcard_temp_and_vcard4_convert_both_ways() {
        let temp = el(
            "<vCard xmlns='vcard-temp'><FN>Alice A</FN><N><FAMILY>A</FAMILY><GIVEN>Alice</GIVEN></N>\
            <NICKNAME>al</NICKNAME><EMAIL><USERID>a@example.org</USERID></EMAIL><TEL><NUMBER>+1 555</NUMBER></TEL>\
            <JABBERID>alice@example.org</JABBERID><ORG><ORGNAME>Acme</ORGNAME></ORG>\
            <ADR><LOCALITY>Paris</LOCALITY><CTRY>FR</CTRY></ADR><BDAY>1990-01-02</BDAY></vCard>",
        );
        let v4 = to_vcard4(&temp);
        let s = v4.to_string();
        for want in [
            "<fn><text>Alice A</text></fn>",
            "<surname>A</surname><given>Alice</given>",
            "<tel><uri>tel:+1 555</uri></tel>",
            "<impp><uri>xmpp:alice@example.org</uri></impp>",
            "<adr><locality>Paris</locality><country>FR</country></adr>",
            "<bday><date>1990-01-02</date></bday>",
        ] {
            assert!(s.contains(want), "{want} not in {s}");
        }
        let back = from_vcard4(&v4);
        for name in [
            "FN", "N", "NICKNAME", "EMAIL", "TEL", "JABBERID", "ORG", "ADR", "BDAY",
        ] {
            assert_eq!(
                back.get_child(name, NS).map(|e| e.to_string()),
                temp.get_child(name, NS).map(|e| e.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn avatar_ids_are_the_sha1_of_the_image() {
        // XEP-0084 §4.1 example: the SHA-1 of the bytes, lower-case hex.
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}

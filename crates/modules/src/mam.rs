//! `mam`: XEP-0313 Message Archive Management (`urn:xmpp:mam:2`, with the `#extended` query
//! fields) and XEP-0359 stanza ids, over the archive store `archive` (keyset pagination on the
//! store's sequence number: no offset scans). Prosody's `mod_mam`.
//!
//! Every archivable message between accounts is stored for the sender and the recipient
//! (XEP-0313 §5: `chat`, and `normal` with a body), subject to each one's preferences, and the
//! recipient's copy is delivered with the server-assigned `<stanza-id/>`, the sender's
//! `<sent/>` carbons with the id of the sender's archive.

use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, SectionInfo};
use canto_core::roster::decode_element;
use canto_core::stores::{ArchiveStore, KvStore};
use canto_core::{IqHandler, IqRequest, IqTarget, MessageHook, Module, ModuleCtx, Server, Spec};
use canto_stanza::{BareJid, Condition, IqType, MessageType, StanzaError, datetime, ns, parse_jid};
use canto_storage::{ArchiveItem, ArchiveQuery, BatchItem, NewArchiveItem};
use canto_xml::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::from_owner;

/// `urn:xmpp:mam:2`.
pub const NS: &str = "urn:xmpp:mam:2";
/// `urn:xmpp:mam:2#extended`.
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359 unique and stable stanza ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 result set management.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";
const STORE: &str = "archive";
const PREFS: &str = "mam_prefs";

/// Page size when the client gives none, and the largest page served.
pub const DEFAULT_MAX: usize = 50;
/// Largest page served.
pub const MAX_MAX: usize = 250;

/// The module.
pub struct Mam;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0313",
        version: "1.1.3",
        title: "Message Archive Management",
    },
    Spec {
        id: "XEP-0359",
        version: "0.7.0",
        title: "Unique and Stable Stanza IDs",
    },
    Spec {
        id: "XEP-0059",
        version: "1.0",
        title: "Result Set Management",
    },
    // The `<prefs/>` of XEP-0313 1.1, split out unchanged (same namespace, same elements).
    Spec {
        id: "XEP-0441",
        version: "0.2.0",
        title: "Message Archive Management Preferences",
    },
];

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0313 §7: the archive is the account's, so the features are on the bare JID.
        ctx.add_account_feature(NS);
        ctx.add_account_feature(NS_EXTENDED);
        ctx.add_account_feature(NS_SID);
        let st = Arc::new(Stores {
            archive: ctx.open_archive(STORE)?,
            prefs: ctx.open_kv(PREFS)?,
            config: ctx.section::<MamConfig>()?,
            commit: Arc::default(),
        });
        let iq = Arc::new(QueryIq { st: st.clone() });
        ctx.hook_iq(IqTarget::Account, IqType::Set, NS, iq.clone())?;
        ctx.hook_iq(IqTarget::Account, IqType::Get, NS, iq)?;
        ctx.hook_message(Arc::new(Archiver { st: st.clone() }));
        ctx.add_timer(
            std::time::Duration::from_secs(3600),
            Arc::new(Expiry { st }),
        )?;
        Ok(())
    }

    fn config_sections(&self) -> Vec<SectionInfo> {
        vec![MamConfig::info()]
    }
}

/// `[mam]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamConfig {
    /// Days archived messages are kept; 0 keeps them forever.
    pub retention_days: u64,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            retention_days: 365,
        }
    }
}

impl ModuleConfig for MamConfig {
    const SECTION: &'static str = "mam";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "Message archive (XEP-0313), when module mam is enabled.",
        ),
        (
            "retention_days",
            "Days archived messages are kept; 0 keeps them forever.",
        ),
    ];
}

/// The module's stores and configuration, shared by its handlers.
struct Stores {
    archive: ArchiveStore,
    prefs: KvStore,
    config: Section<MamConfig>,
    /// Archive writes of concurrent messages, committed together.
    commit: Arc<GroupCommit>,
}

/// Group commit of archive writes: every copy that arrives while a batch is being committed
/// goes into the next transaction. Each message still waits until its own copies are durable
/// before it is delivered (the stanza-id it carries is the archive's), but messages that
/// arrive together cost one commit (one fsync) instead of one each: with 100 busy senders,
/// 2 fsyncs per message had capped delivery at ~900 messages/s (docs/benchmarks.md).
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<Batch>,
}

#[derive(Default)]
struct Batch {
    pending: Vec<(BatchItem, oneshot::Sender<Option<String>>)>,
    /// A writer task is running (it takes `pending` until it finds it empty).
    writing: bool,
}

impl GroupCommit {
    /// Queues `item` and waits until it is committed; its archive id, or None on failure.
    async fn append(self: &Arc<Self>, archive: &ArchiveStore, item: BatchItem) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = self.state.lock().ok()?;
            b.pending.push((item, tx));
            !std::mem::replace(&mut b.writing, true)
        };
        if start {
            // A task of its own: a caller cancelled mid-commit must not strand the others.
            let me = self.clone();
            let archive = archive.clone();
            tokio::spawn(async move { me.write_all(&archive).await });
        }
        rx.await.ok().flatten()
    }

    async fn write_all(&self, archive: &ArchiveStore) {
        // Should the writer die (a panic), the next append starts a new one and nobody waits
        // for a batch that will never be written.
        struct Reset<'a>(&'a GroupCommit);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if std::thread::panicking()
                    && let Ok(mut b) = self.0.state.lock()
                {
                    b.writing = false;
                    b.pending.clear();
                }
            }
        }
        let _reset = Reset(self);
        loop {
            let batch = {
                let Ok(mut b) = self.state.lock() else {
                    return;
                };
                if b.pending.is_empty() {
                    b.writing = false;
                    return;
                }
                std::mem::take(&mut b.pending)
            };
            let (items, waiters): (Vec<BatchItem>, Vec<_>) = batch.into_iter().unzip();
            match archive.append_batch(&items).await {
                Ok(ids) => {
                    for (w, id) in waiters.into_iter().zip(ids) {
                        let _ = w.send(Some(id));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = items.len(), "archive batch not stored");
                    for w in waiters {
                        let _ = w.send(None);
                    }
                }
            }
        }
    }
}

/// XEP-0313 retention: at startup and then once an hour, archived messages older than
/// `mam.retention_days` are deleted (never when it is 0).
struct Expiry {
    st: Arc<Stores>,
}

#[async_trait]
impl canto_core::Timer for Expiry {
    async fn tick(&self, _server: &Arc<Server>) {
        let st = &self.st;
        let days = st.config.get().retention_days;
        if days == 0 {
            return;
        }
        let cutoff = datetime::now_millis().saturating_sub(
            i64::try_from(days)
                .unwrap_or(i64::MAX / 86_400_000)
                .saturating_mul(86_400_000),
        );
        match st.archive.delete_older_than(cutoff).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired archived messages"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "archive expiry failed"),
        }
    }
}

/// XEP-0313 §5.1: what is archived.
fn archivable(el: &Element) -> bool {
    if el.has_child("no-store", "urn:xmpp:hints") {
        return false;
    }
    match MessageType::of(el) {
        MessageType::Chat => {
            el.has_child("body", ns::CLIENT)
                || el.children().any(|c| {
                    c.ns() != ns::CLIENT && c.ns() != "http://jabber.org/protocol/chatstates"
                })
        }
        MessageType::Normal => el.has_child("body", ns::CLIENT),
        _ => false,
    }
}

/// Archiving preferences (XEP-0313 §6.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Prefs {
    default: String,
    always: Vec<String>,
    never: Vec<String>,
}

impl Prefs {
    fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[String]| {
            let mut e = Element::new(name, NS);
            for j in jids {
                e.push_child(Element::new("jid", NS).with_text(j.clone()));
            }
            e
        };
        Element::new("prefs", NS)
            .with_attr("default", self.default.clone())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    fn from_element(e: &Element) -> Option<Prefs> {
        let default = e.attr("default")?.to_string();
        if !matches!(default.as_str(), "always" | "never" | "roster") {
            return None;
        }
        let jids = |name: &str| -> Vec<String> {
            e.get_child(name, NS)
                .map(|l| {
                    l.children()
                        .filter_map(|j| parse_jid(&j.text()).ok().map(|j| j.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Prefs {
            default,
            always: jids("always"),
            never: jids("never"),
        })
    }
}

async fn prefs(st: &Stores, user: &BareJid) -> Prefs {
    let (host, node) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let stored = st.prefs.get(host, node).await.ok().flatten();
    stored
        .as_deref()
        .and_then(decode_element)
        .as_ref()
        .and_then(Prefs::from_element)
        .unwrap_or(Prefs {
            default: "always".into(),
            ..Prefs::default()
        })
}

/// Whether `user` archives messages with `with` (§6.1: never beats always beats default).
async fn wants(server: &Server, st: &Stores, user: &BareJid, with: &BareJid) -> bool {
    let p = prefs(st, user).await;
    let w = with.to_string();
    if p.never.contains(&w) {
        return false;
    }
    if p.always.contains(&w) {
        return true;
    }
    match p.default.as_str() {
        "never" => false,
        "roster" => server.roster(user).await.contains_key(with),
        _ => true,
    }
}

async fn store(st: &Stores, user: &BareJid, with: &BareJid, el: &Element) -> Option<String> {
    let node = user.node()?;
    let item = BatchItem {
        host: user.domain().to_string(),
        user: node.to_string(),
        item: NewArchiveItem {
            with: with.to_string(),
            stamp_ms: datetime::now_millis(),
            data: el.to_bytes_in(ns::CLIENT),
        },
    };
    st.commit.append(&st.archive, item).await
}

struct Archiver {
    st: Arc<Stores>,
}

#[async_trait]
impl MessageHook for Archiver {
    async fn on_message(
        &self,
        server: &Arc<Server>,
        el: &mut Element,
        sender: Option<&BareJid>,
        recipient: Option<&BareJid>,
    ) {
        // XEP-0359 §3.2: a stanza-id claiming to be from the recipient's archive — or, sent
        // by a client, from its own account's — is a forgery.
        for j in [recipient, sender].into_iter().flatten() {
            el.remove_children(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(j.as_str()));
        }
        if !archivable(el) {
            return;
        }
        // Whose archives take a copy (each owner's preferences, §6.1).
        let mut for_sender = None;
        if let (Some(s), Some(r)) = (sender, recipient) {
            if wants(server, &self.st, s, r).await {
                for_sender = Some((s.clone(), r.clone()));
            }
        } else if let Some(s) = sender
            && let Some(to) = el.attr("to").and_then(|t| parse_jid(t).ok())
            && wants(server, &self.st, s, &to.to_bare()).await
        {
            for_sender = Some((s.clone(), to.to_bare()));
        }
        let mut for_recipient = None;
        if let Some(r) = recipient {
            let from = el
                .attr("from")
                .and_then(|f| parse_jid(f).ok())
                .map(|f| f.to_bare());
            if let Some(from) = from
                && server.account_exists(r).await
                && wants(server, &self.st, r, &from).await
            {
                for_recipient = Some((r.clone(), from));
            }
        }
        // Both copies are committed together (and with other messages': `GroupCommit`).
        let copy = |t: &Option<(BareJid, BareJid)>| {
            let t = t.clone();
            let el = &*el;
            let st = &self.st;
            async move {
                match t {
                    Some((owner, with)) => store(st, &owner, &with, el).await,
                    None => None,
                }
            }
        };
        let (sender_id, recipient_id) = tokio::join!(copy(&for_sender), copy(&for_recipient));
        if let (Some(r), Some(id)) = (recipient, recipient_id) {
            // XEP-0359 §3.1 / XEP-0313 §5.2: the id the recipient's archive gave it.
            el.push_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("id", id)
                    .with_attr("by", r.to_string()),
            );
        }
        // XEP-0313 §3 ("Communicating the archive ID"): the sender's own copies — `<sent/>`
        // carbons — carry the id its archive gave the message (added after the recipient's
        // copy was stored); the router takes it off again before the message goes on.
        if let (Some(s), Some(id)) = (sender, sender_id) {
            el.push_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("id", id)
                    .with_attr("by", s.to_string()),
            );
        }
    }
}

struct QueryIq {
    st: Arc<Stores>,
}

/// The query form's fields (XEP-0313 §5.1.1, §6.1.1 and the `#extended` fields).
pub(crate) fn form() -> Element {
    let field = |var: &str, kind: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
    };
    Element::new("query", NS).with_child(
        Element::new("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(
                field("FORM_TYPE", "hidden")
                    .with_child(Element::new("value", NS_DATA).with_text(NS)),
            )
            .with_child(field("with", "jid-single"))
            .with_child(field("start", "text-single"))
            .with_child(field("end", "text-single"))
            .with_child(field("before-id", "text-single"))
            .with_child(field("after-id", "text-single"))
            // XEP-0313 §4.1, "Retrieving form fields": the list of ids is open, an XEP-0122
            // <validate/> with <open/> and no options.
            .with_child(
                field("ids", "list-multi").with_child(
                    Element::new("validate", "http://jabber.org/protocol/xdata-validate")
                        .with_attr("datatype", "xs:string")
                        .with_child(Element::new(
                            "open",
                            "http://jabber.org/protocol/xdata-validate",
                        )),
                ),
            ),
    )
}

fn bad(text: &str) -> StanzaError {
    StanzaError::new(Condition::BadRequest).with_text(text.to_string())
}

/// Milliseconds since the epoch of an XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`,
/// any number of fraction digits). Every field has exactly its XEP-0082 width (Prosody's parser
/// wants the same), so a year such as 99999999999 is refused rather than overflowing the
/// arithmetic below: years 0000–9999 keep every intermediate value far inside `i64`.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    /// Exactly `width` ASCII digits (no sign, which `str::parse` would accept).
    fn digits(s: &str, width: usize) -> Option<i64> {
        if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da) = (
        digits(d.next()?, 4)?,
        digits(d.next()?, 2)?,
        digits(d.next()?, 2)?,
    );
    if d.next().is_some() {
        return None;
    }
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om) = (digits(oh, 2)?, digits(om, 2)?);
        if oh > 23 || om > 59 {
            return None;
        }
        (t, sign * (oh * 60 + om))
    };
    let mut tp = time.split(':');
    let h = digits(tp.next()?, 2)?;
    let mi = digits(tp.next()?, 2)?;
    // Seconds and their fraction as integers (no float rounding: `.007` is 7 ms); digits
    // beyond milliseconds are dropped.
    let tok = tp.next()?;
    if tp.next().is_some() {
        return None;
    }
    let (whole, frac) = tok.split_once('.').unwrap_or((tok, ""));
    let sec = digits(whole, 2)?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms_frac = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || h > 23
        || mi > 59
        || !(0..61).contains(&sec)
    {
        return None;
    }
    // Days from civil (proleptic Gregorian), the inverse of `datetime::civil_from_days`.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 - offset_min * 60;
    Some((secs + sec) * 1000 + ms_frac)
}

fn field_values(x: &Element, var: &str) -> Vec<String> {
    x.children()
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| {
            f.children()
                .filter(|v| v.is("value", NS_DATA))
                .map(|v| v.text())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn exists(archive: &ArchiveStore, user: &BareJid, id: &str) -> bool {
    let (host, node) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let q = ArchiveQuery {
        ids: Some(vec![id.to_string()]),
        ..ArchiveQuery::default()
    };
    archive.count(host, node, &q).await.unwrap_or(0) > 0
}

#[async_trait]
impl IqHandler for QueryIq {
    /// XEP-0313 §4 (query), §5.1.1 (form), §6.1 (preferences), §7 (metadata).
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        // §4: only the owner queries an account's archive.
        if !from_owner(&req) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let user = req.from.to_bare();
        let kind = IqType::of(req.stanza);
        match (kind, req.payload.name()) {
            (Some(IqType::Get), "query") => Ok(Some(form())),
            (Some(IqType::Get), "prefs") => Ok(Some(prefs(&self.st, &user).await.to_element())),
            (Some(IqType::Set), "prefs") => {
                let p = Prefs::from_element(req.payload).ok_or_else(|| bad("invalid prefs"))?;
                let (host, node) = (
                    user.domain().as_str(),
                    user.node().map(|n| n.as_str()).unwrap_or_default(),
                );
                self.st
                    .prefs
                    .set(host, node, Some(&p.to_element().to_bytes()))
                    .await
                    .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
                Ok(Some(p.to_element()))
            }
            (Some(IqType::Get), "metadata") => metadata(&self.st, &user).await.map(Some),
            (Some(IqType::Set), "query") => {
                let page = run_query(&self.st.archive, req.payload, &user).await?;
                if let Some(session) = req.origin.session() {
                    for result in page.results {
                        let msg = Element::new("message", ns::CLIENT)
                            .with_attr("to", req.from.to_string())
                            .with_attr("from", user.to_string())
                            .with_child(result);
                        let _ = session.deliver(Arc::new(msg));
                    }
                }
                Ok(Some(page.fin))
            }
            _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
        }
    }
}

/// XEP-0313 §7.1: the first and last items of the archive.
async fn metadata(st: &Stores, user: &BareJid) -> Result<Element, StanzaError> {
    let (host, node) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let a = &st.archive;
    let internal = |_| StanzaError::new(Condition::InternalServerError);
    let first = a
        .query(
            host,
            node,
            &ArchiveQuery {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .map_err(internal)?;
    let last = a
        .query(
            host,
            node,
            &ArchiveQuery {
                limit: Some(1),
                reverse: true,
                ..Default::default()
            },
        )
        .await
        .map_err(internal)?;
    let mut m = Element::new("metadata", NS);
    for (name, item) in [("start", first.first()), ("end", last.first())] {
        if let Some(i) = item {
            m.push_child(
                Element::new(name, NS)
                    .with_attr("id", i.id.clone())
                    .with_attr("timestamp", datetime::from_millis_exact(i.stamp_ms)),
            );
        }
    }
    Ok(m)
}

/// One page of a query: the `<result/>` elements to send (each in a message from the archive's
/// JID) and the `<fin/>` for the IQ result.
pub(crate) struct QueryPage {
    /// `<result/>` elements, in order.
    pub results: Vec<Element>,
    /// The IQ result's payload.
    pub fin: Element,
}

/// XEP-0313 §4.1–§4.3 with XEP-0059 paging, on the archive of `user` (an account, or a room
/// for MUC archives: host = domain, user = node).
pub(crate) async fn run_query(
    archive: &ArchiveStore,
    payload: &Element,
    user: &BareJid,
) -> Result<QueryPage, StanzaError> {
    let st = archive;
    let mut q = ArchiveQuery::default();
    // A full JID in `with` matches that resource only (XEP-0313 §4.1.1, "Filtering by JID");
    // the archive indexes the bare JID, so such results are filtered after reading.
    let mut with_full: Option<String> = None;
    if let Some(x) = payload.get_child("x", NS_DATA) {
        for v in field_values(x, "FORM_TYPE") {
            if v != NS {
                return Err(bad("unknown FORM_TYPE"));
            }
        }
        // XEP-0313 §4.1, "Retrieving form fields": "If a client includes a form field that the
        // server does not recognise, the server MUST respond with a 'feature-not-implemented'
        // error."
        const KNOWN: &[&str] = &[
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids",
        ];
        if let Some(unknown) = x
            .children()
            .filter(|f| f.is("field", NS_DATA))
            .filter_map(|f| f.attr("var"))
            .find(|v| !KNOWN.contains(v))
        {
            return Err(StanzaError::new(Condition::FeatureNotImplemented)
                .with_text(format!("unknown field {unknown}")));
        }
        if let Some(w) = field_values(x, "with").first() {
            let jid = parse_jid(w)?;
            if jid.resource().is_some() {
                with_full = Some(jid.to_string());
            }
            q.with = Some(jid.to_bare().to_string());
        }
        if let Some(t) = field_values(x, "start").first() {
            q.start_ms = Some(parse_time(t).ok_or_else(|| bad("invalid start"))?);
        }
        if let Some(t) = field_values(x, "end").first() {
            q.end_ms = Some(parse_time(t).ok_or_else(|| bad("invalid end"))?);
        }
        q.after_id = field_values(x, "after-id").first().cloned();
        q.before_id = field_values(x, "before-id").first().cloned();
        let ids = field_values(x, "ids");
        if !ids.is_empty() {
            q.ids = Some(ids);
        }
        // XEP-0313 §4.1, "Limiting results by id": "If any UID requested by the client in any
        // of the 'before-id', 'after-id' or 'ids' form fields is not present in the archive,
        // the server MUST return an item-not-found error".
        let listed = q.ids.iter().flatten();
        for id in q.after_id.iter().chain(q.before_id.iter()).chain(listed) {
            if !exists(st, user, id).await {
                return Err(StanzaError::new(Condition::ItemNotFound));
            }
        }
    }
    // XEP-0059 §2: max, after, before.
    let set = payload.get_child("set", NS_RSM);
    let max = match set.and_then(|s| s.get_child("max", NS_RSM)) {
        Some(m) => m
            .text()
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("invalid max"))?
            .min(MAX_MAX),
        None => DEFAULT_MAX,
    };
    // XEP-0059 §2.6: `<index/>` asks for a page out of order, which keyset paging cannot
    // serve; 0 (the first page) is what a query without it returns. A value that is no
    // non-negative integer (or too large for one) is bad-request.
    if let Some(i) = set.and_then(|s| s.get_child("index", NS_RSM)) {
        let index = i
            .text()
            .trim()
            .parse::<u64>()
            .map_err(|_| bad("invalid index"))?;
        if index != 0 {
            return Err(StanzaError::new(Condition::FeatureNotImplemented)
                .with_text("pages out of order (index) are not supported"));
        }
    }
    let after = set
        .and_then(|s| s.get_child("after", NS_RSM))
        .map(|a| a.text());
    let before = set
        .and_then(|s| s.get_child("before", NS_RSM))
        .map(|b| b.text());
    for id in after.iter().chain(before.iter()).filter(|i| !i.is_empty()) {
        // XEP-0059 §2.5 / XEP-0313 §4.3: paging from an unknown id is item-not-found.
        if !exists(st, user, id).await {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
    }
    let (host, node) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let internal = |_| StanzaError::new(Condition::InternalServerError);
    // XEP-0059 §2.6: the count is optional; with a full-JID `with` it would mean reading the
    // whole conversation, so it is left out there.
    let count = match &with_full {
        Some(_) => None,
        None => Some(archive.count(host, node, &q).await.map_err(internal)?),
    };
    // Paging backwards (`<before/>`) reads newest first, then puts the page in order.
    let backwards = before.is_some();
    let mut page_q = q.clone();
    if let Some(a) = after.filter(|a| !a.is_empty()) {
        page_q.after_id = Some(a);
    }
    if let Some(b) = before.clone().filter(|b| !b.is_empty()) {
        page_q.before_id = Some(b);
    }
    page_q.reverse = backwards;
    page_q.limit = Some(max + 1);
    let mut items: Vec<ArchiveItem> = match (&with_full, max) {
        (None, 0) => Vec::new(),
        (None, _) => archive.query(host, node, &page_q).await.map_err(internal)?,
        (Some(full), _) => {
            let wanted = |item: &ArchiveItem| with_resource(user, full, item);
            read_filtered(st, host, node, page_q, max + 1, wanted)
                .await
                .map_err(internal)?
        }
    };
    // With max 0 (XEP-0059 §2.7, the count alone) nothing was read: the page is limited
    // whenever anything matched.
    let more = match (max, count) {
        (0, Some(count)) => count > 0,
        _ => items.len() > max,
    };
    items.truncate(max);
    if backwards {
        items.reverse();
    }
    // XEP-0313 §4.2: flip-page reverses the order within the page.
    let flip = payload.has_child("flip-page", NS);
    if flip {
        items.reverse();
    }
    let queryid = payload.attr("queryid").map(str::to_string);
    let mut results = Vec::with_capacity(items.len());
    {
        for item in &items {
            let Some(original) = decode_element(&item.data) else {
                continue;
            };
            let mut result = Element::new("result", NS).with_attr("id", item.id.clone());
            if let Some(qid) = &queryid {
                result.set_attr("queryid", qid.clone());
            }
            result.push_child(
                Element::new("forwarded", "urn:xmpp:forward:0")
                    .with_child(
                        // Milliseconds, as stored: a stamp handed back as `start` or `end`
                        // (XEP-0313 §4.1.4) then bounds the query at this very message.
                        Element::new("delay", ns::DELAY)
                            .with_attr("stamp", datetime::from_millis_exact(item.stamp_ms)),
                    )
                    .with_child(original),
            );
            results.push(result);
        }
    }
    let mut fin = Element::new("fin", NS);
    // §4.3: complete when this page reaches the end of the results in paging order.
    if !more {
        fin.set_attr("complete", "true");
    }
    let mut rsm = Element::new("set", NS_RSM);
    let (first, last) = if flip {
        (items.last(), items.first())
    } else {
        (items.first(), items.last())
    };
    if let (Some(f), Some(l)) = (first, last) {
        rsm.push_child(Element::new("first", NS_RSM).with_text(f.id.clone()));
        rsm.push_child(Element::new("last", NS_RSM).with_text(l.id.clone()));
    }
    if let Some(count) = count {
        rsm.push_child(Element::new("count", NS_RSM).with_text(count.to_string()));
    }
    fin.push_child(rsm);
    Ok(QueryPage { results, fin })
}

/// Whether an archived message of `user` was exchanged with the full JID `full`: the `to` of
/// what the user sent, the `from` of what the user received.
fn with_resource(user: &BareJid, full: &str, item: &ArchiveItem) -> bool {
    let Some(m) = decode_element(&item.data) else {
        return false;
    };
    let jid = |a: &str| m.attr(a).and_then(|j| parse_jid(j).ok());
    let outgoing = jid("from").is_some_and(|f| &f.to_bare() == user);
    let peer = if outgoing { jid("to") } else { jid("from") };
    peer.is_some_and(|p| p.to_string() == full)
}

/// Reads up to `want` items of `q` that pass `keep`, in `q`'s order, batch by batch from
/// where the previous batch ended (keyset paging: no offsets).
async fn read_filtered(
    st: &ArchiveStore,
    host: &str,
    node: &str,
    mut q: ArchiveQuery,
    want: usize,
    keep: impl Fn(&ArchiveItem) -> bool,
) -> Result<Vec<ArchiveItem>, canto_storage::StorageError> {
    let batch = want.max(100);
    let mut out = Vec::new();
    loop {
        q.limit = Some(batch);
        let got = st.query(host, node, &q).await?;
        let n = got.len();
        let last = got.last().map(|i| i.id.clone());
        for item in got {
            if keep(&item) {
                out.push(item);
                if out.len() >= want {
                    return Ok(out);
                }
            }
        }
        match last {
            Some(id) if n == batch => {
                if q.reverse {
                    q.before_id = Some(id);
                } else {
                    q.after_id = Some(id);
                }
            }
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0082_times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_time("2023-13-14T22:13:20Z"), None);
        // Microseconds (Prosody's stamps) are cut to milliseconds; no float rounding.
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.007Z"),
            Some(1_700_000_000_007)
        );
        assert_eq!(parse_time("2023-11-14T22:13:20.Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.5xZ"), None);
        assert_eq!(parse_time("2023-11-14T22:13:+2Z"), None);
        assert_eq!(parse_time("2023-11-14T22:13:20:01Z"), None);
        assert_eq!(parse_time("yesterday"), None);
        // Widths are XEP-0082's: no overflow on huge years or offsets, no signs or short fields.
        for bad in [
            "99999999999-01-01T00:00:00Z",
            "9223372036854775807-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "+2023-11-14T22:13:20Z",
            "10000-01-01T00:00:00Z",
            "2023-1-14T22:13:20Z",
            "2023-11-14T2:13:20Z",
            "2023-11-14T22:13:20+99999999999:00",
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20+02:60",
            "2023-11-14T22:13:20+2:00",
            "2023-11-14T22:13:999999999999999999999Z",
            "2023-11-14-01T22:13:20Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(
            parse_time("0000-01-01T00:00:00Z"),
            Some(-62_167_219_200_000)
        );
        assert_eq!(
            parse_time("9999-12-31T23:59:60.999-23:59"),
            // 9999-12-31T00:00:00Z is 253402214400 s; plus 23:59:60, plus the 23:59 offset.
            Some((253_402_214_400 + 86_400 + 86_340) * 1000 + 999)
        );
        for ms in [0i64, 951_782_400_000, 1_700_000_000_000, 4_102_444_800_000] {
            assert_eq!(parse_time(&datetime::from_millis(ms)), Some(ms));
        }
        // The stamps MAM writes read back to the stored millisecond.
        for ms in [
            1i64,
            1_700_000_000_007,
            1_700_000_000_999,
            1_764_115_200_123,
        ] {
            assert_eq!(parse_time(&datetime::from_millis_exact(ms)), Some(ms));
        }
    }

    /// Pseudo-random DateTime-like strings (xorshift64*, no extra dependency): parsing never
    /// panics, and whatever parses lies within years 0000–9999.
    #[test]
    fn parse_time_never_panics_on_arbitrary_input() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        const ALPHABET: &[u8] = b"0123456789999-+:TZ.";
        let (min, max) = (-62_167_305_600_000i64, 253_402_387_200_999 + 86_400_000);
        for _ in 0..20_000 {
            let mut s = String::from("2023-11-14T22:13:20Z");
            // Mutate a template, sometimes with long digit runs (huge numbers).
            let mut bytes: Vec<u8> = s.into_bytes();
            for _ in 0..(next() % 6) {
                let pos = (next() as usize) % (bytes.len() + 1);
                match next() % 4 {
                    0 => bytes.insert(pos, ALPHABET[(next() as usize) % ALPHABET.len()]),
                    1 if pos < bytes.len() => {
                        bytes[pos] = ALPHABET[(next() as usize) % ALPHABET.len()]
                    }
                    2 if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    _ => {
                        for _ in 0..(next() % 24) {
                            bytes.insert(pos.min(bytes.len()), b'9');
                        }
                    }
                }
            }
            s = String::from_utf8(bytes).unwrap_or_default();
            if let Some(ms) = parse_time(&s) {
                assert!((min..=max).contains(&ms), "{s} gave {ms}");
            }
        }
    }

    #[test]
    fn archivable_messages() {
        let m = |t: &str, body: bool| {
            let mut e = Element::new("message", ns::CLIENT).with_attr("type", t);
            if body {
                e.push_child(Element::new("body", ns::CLIENT).with_text("x"));
            }
            e
        };
        assert!(archivable(&m("chat", true)));
        assert!(archivable(&m("normal", true)));
        assert!(!archivable(&m("normal", false)));
        assert!(!archivable(&m("chat", false)));
        assert!(!archivable(&m("headline", true)));
        assert!(!archivable(&m("groupchat", true)));
        assert!(!archivable(&m("error", true)));
        assert!(!archivable(
            &m("chat", true).with_child(Element::new("no-store", "urn:xmpp:hints"))
        ));
    }

    #[test]
    fn prefs_round_trip_and_validate() {
        let p = Prefs {
            default: "roster".into(),
            always: vec!["a@b".into()],
            never: vec!["c@d".into()],
        };
        assert_eq!(Prefs::from_element(&p.to_element()), Some(p));
        let bad = Element::new("prefs", NS).with_attr("default", "sometimes");
        assert_eq!(Prefs::from_element(&bad), None);
    }
}

//! XEP-0115 entity capabilities of clients, for PEP's `+notify` filtering (XEP-0163 §4.3.3):
//! the features behind a `ver` hash, fetched once with disco#info from the first resource that
//! announces it, verified (§5.4) and kept in a bounded cache.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_core::{Hooked, StanzaEvent, StanzaHook};
use canto_stanza::{FullJid, IqType, ns};
use canto_xml::Element;
use tokio::sync::oneshot;

use super::form;

/// The caps namespace.
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// A `<c/>` from a presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `hash` (only `sha-1` is verified and cached, as XEP-0115 §5.4 requires support for).
    pub hash: String,
    /// `node`
    pub node: String,
    /// `ver`
    pub ver: String,
}

impl Caps {
    /// The `<c/>` of a presence, if it has a hashed one (legacy caps without `hash` are
    /// ignored, XEP-0115 §8.4).
    pub fn of(presence: &Element) -> Option<Caps> {
        let c = presence.get_child("c", NS_CAPS)?;
        Some(Caps {
            hash: c.attr("hash")?.to_string(),
            node: c.attr("node").unwrap_or_default().to_string(),
            ver: c.attr("ver")?.to_string(),
        })
    }
}

struct Cache {
    features: HashMap<String, Arc<HashSet<String>>>,
    order: VecDeque<String>,
}

type Waiter = (FullJid, oneshot::Sender<Element>);

/// Verified `ver` → features, bounded; and the disco#info queries in flight.
pub struct CapsCache {
    capacity: usize,
    cache: Mutex<Cache>,
    pending: Mutex<HashMap<String, Waiter>>,
    /// `ver`s being asked about now: later resources announcing the same one wait for that
    /// answer instead of asking again (a login storm of one client version asks once).
    inflight: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
}

/// Queries still unanswered at once; beyond, new ones are not sent (their resources get no
/// `+notify` interest until a later presence).
const MAX_PENDING: usize = 10_000;
/// How long a client has to answer the disco#info query.
const TIMEOUT: Duration = Duration::from_secs(10);

impl CapsCache {
    /// A cache of at most `capacity` hashes.
    pub fn new(capacity: usize) -> CapsCache {
        CapsCache {
            capacity: capacity.max(1),
            cache: Mutex::new(Cache {
                features: HashMap::new(),
                order: VecDeque::new(),
            }),
            pending: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// How many hashes are cached.
    pub fn len(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.features.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cached(&self, ver: &str) -> Option<Arc<HashSet<String>>> {
        self.cache.lock().ok()?.features.get(ver).cloned()
    }

    fn insert(&self, ver: &str, features: Arc<HashSet<String>>) {
        let Ok(mut c) = self.cache.lock() else { return };
        if c.features.insert(ver.to_string(), features).is_none() {
            c.order.push_back(ver.to_string());
            while c.order.len() > self.capacity {
                if let Some(old) = c.order.pop_front() {
                    c.features.remove(&old);
                }
            }
        }
    }

    /// The features of `caps` as announced by `from`: from the cache, else asked of `from`
    /// with disco#info (XEP-0115 §6.2) and, when the answer hashes to `ver`, cached. An answer
    /// that does not verify is used for this resource only (§5.4 step 3.?: not cached).
    /// `host` is the local domain the question comes from (the answer is an IQ to it, taken
    /// by [`Answers`]): the resource's own for a local session; for a remote contact's
    /// resource, the domain of the account its presence was for, and the question goes over
    /// federation.
    pub async fn resolve(
        &self,
        server: &Arc<canto_core::Server>,
        host: &str,
        from: &FullJid,
        caps: &Caps,
    ) -> Arc<HashSet<String>> {
        let verifiable = caps.hash == "sha-1";
        if verifiable && let Some(f) = self.cached(&caps.ver) {
            return f;
        }
        // One question per `ver` at a time: wait for the one in flight, then use its verified
        // answer; without one (it did not verify, or timed out) ask this resource itself.
        let mut _leader = None;
        if verifiable {
            let waiting = {
                let Ok(mut inflight) = self.inflight.lock() else {
                    return Arc::default();
                };
                match inflight.get(&caps.ver) {
                    Some(rx) => Some(rx.clone()),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(false);
                        inflight.insert(caps.ver.clone(), rx);
                        _leader = Some(InflightGuard {
                            cache: self,
                            ver: caps.ver.clone(),
                            done: tx,
                        });
                        None
                    }
                }
            };
            if let Some(mut rx) = waiting {
                let _ = tokio::time::timeout(TIMEOUT, rx.wait_for(|done| *done)).await;
                if let Some(f) = self.cached(&caps.ver) {
                    return f;
                }
            }
        }
        let id = format!("caps-{}", super::engine::new_id());
        let (tx, rx) = oneshot::channel();
        {
            let Ok(mut p) = self.pending.lock() else {
                return Arc::default();
            };
            // One question in flight per resource, and MAX_PENDING in all: a client announcing
            // ever new `ver`s gets no answer of its own to wait for, and cannot use up the
            // budget the others share.
            if p.len() >= MAX_PENDING || p.values().any(|(jid, _)| jid == from) {
                return Arc::default();
            }
            p.insert(id.clone(), (from.clone(), tx));
        }
        let query = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", &id)
            .with_attr("from", host)
            .with_attr("to", from.to_string())
            .with_child(
                Element::new("query", ns::DISCO_INFO)
                    .with_attr("node", format!("{}#{}", caps.node, caps.ver)),
            );
        let sent = if server.serves(from.domain().as_str()) {
            server.deliver_to_session(from, Arc::new(query))
        } else {
            server.send_to_remote(query)
        };
        let answer = if sent {
            tokio::time::timeout(TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        let Some(result) = answer else {
            return Arc::default();
        };
        let Some(query) = result.get_child("query", ns::DISCO_INFO) else {
            return Arc::default();
        };
        let features: Arc<HashSet<String>> = Arc::new(
            query
                .children()
                .filter(|c| c.is("feature", ns::DISCO_INFO))
                .filter_map(|c| c.attr("var").map(str::to_string))
                .collect(),
        );
        if verifiable && verification(query).as_deref() == Some(caps.ver.as_str()) {
            self.insert(&caps.ver, features.clone());
        }
        features
    }

    /// Hands an IQ answer to the query waiting for it; whether it was one of ours.
    fn answered(&self, id: &str, from: &str, el: &Element) -> bool {
        let Ok(mut p) = self.pending.lock() else {
            return false;
        };
        match p.get(id) {
            Some((jid, _)) if jid.to_string() == from => {
                if let Some((_, tx)) = p.remove(id) {
                    let _ = tx.send(el.clone());
                }
                true
            }
            _ => false,
        }
    }
}

/// Ends a `ver`'s turn in flight (also when the asking task is dropped): waiters wake and read
/// the cache.
struct InflightGuard<'a> {
    cache: &'a CapsCache,
    ver: String,
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.cache.inflight.lock() {
            inflight.remove(&self.ver);
        }
        let _ = self.done.send(true);
    }
}

/// XEP-0115 §5.1 (with §5.4's checks): the verification string of a disco#info result, or
/// None when the result is one §5.4 says not to trust (duplicate identities or features,
/// malformed forms).
pub fn verification(query: &Element) -> Option<String> {
    let mut identities = Vec::new();
    let mut features = Vec::new();
    let mut forms = Vec::new();
    for c in query.children() {
        if c.is("identity", ns::DISCO_INFO) {
            identities.push((
                c.attr("category").unwrap_or_default(),
                c.attr("type").unwrap_or_default(),
                c.attr("xml:lang").unwrap_or_default(),
                c.attr("name").unwrap_or_default(),
            ));
        } else if c.is("feature", ns::DISCO_INFO) {
            features.push(c.attr("var").unwrap_or_default());
        } else if c.is("x", form::NS) && c.attr("type") == Some("result") {
            let mut form_type = None;
            let mut fields = Vec::new();
            for f in c.children().filter(|f| f.is("field", form::NS)) {
                let var = f.attr("var")?;
                let values: Vec<String> = f
                    .children()
                    .filter(|v| v.is("value", form::NS))
                    .map(Element::text)
                    .collect();
                if var == "FORM_TYPE" {
                    // §5.4 3.6: FORM_TYPE has one value and is hidden.
                    if values.len() != 1 {
                        return None;
                    }
                    form_type = values.into_iter().next();
                } else {
                    fields.push((var.to_string(), values));
                }
            }
            // §5.4 3.5: forms without FORM_TYPE are ignored.
            if let Some(t) = form_type {
                forms.push((t, fields));
            }
        }
    }
    // §5.4 3.3, 3.4: duplicates make the result unverifiable.
    let mut seen = HashSet::new();
    if !identities.iter().all(|i| seen.insert(*i)) {
        return None;
    }
    let mut seen = HashSet::new();
    if !features.iter().all(|f| seen.insert(*f)) {
        return None;
    }
    let forms_ref: Vec<canto_proto::caps::Form<'_>> = forms
        .iter()
        .map(|(t, fields)| {
            (
                t.as_str(),
                fields
                    .iter()
                    .map(|(v, vals)| (v.as_str(), vals.iter().map(String::as_str).collect()))
                    .collect(),
            )
        })
        .collect();
    Some(canto_proto::caps::ver_with_forms(
        &identities,
        &features,
        &forms_ref,
    ))
}

/// Takes the disco#info answers to the cache's queries before the router sees them (they are
/// IQ results addressed to the host).
pub struct Answers(pub Arc<CapsCache>);

#[async_trait::async_trait]
impl StanzaHook for Answers {
    async fn on_stanza(&self, ev: StanzaEvent<'_>) -> Hooked {
        let el = &*ev.stanza;
        if !matches!(IqType::of(el), Some(IqType::Result | IqType::Error)) {
            return Hooked::Pass;
        }
        let (Some(id), Some(from)) = (el.attr("id"), el.attr("from")) else {
            return Hooked::Pass;
        };
        if id.starts_with("caps-") && self.0.answered(id, from, el) {
            Hooked::Handled
        } else {
            Hooked::Pass
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
    fn the_xep_0115_complex_example_verifies() {
        // XEP-0115 §5.3: Psi 0.11 with a software version form.
        let q = el(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
              <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
              <field var='os'><value>Mac</value></field>\
              <field var='os_version'><value>10.5.1</value></field>\
              <field var='software'><value>Psi</value></field>\
              <field var='software_version'><value>0.11</value></field>\
            </x></query>",
        );
        assert_eq!(
            verification(&q).as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }

    #[test]
    fn duplicate_features_are_not_verifiable() {
        let q = el("<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity category='client' type='pc'/>\
            <feature var='a'/><feature var='a'/></query>");
        assert_eq!(verification(&q), None);
    }

    #[test]
    fn the_cache_is_bounded_oldest_out() {
        let c = CapsCache::new(2);
        for v in ["a", "b", "c"] {
            c.insert(v, Arc::new(HashSet::from([v.to_string()])));
        }
        assert_eq!(c.len(), 2);
        assert!(c.cached("a").is_none());
        assert!(c.cached("c").is_some());
    }
}

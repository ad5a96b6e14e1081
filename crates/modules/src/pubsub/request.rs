//! Parsing of XEP-0060 requests: the `<pubsub/>` payload of an IQ (in the `pubsub` or
//! `pubsub#owner` namespace) into a [`Request`], with the errors XEP-0060 gives for malformed
//! ones. Pure, so it is fuzzed on its own (`fuzz/fuzz_targets/pubsub_request.rs`).

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;

use super::form::{self, Submitted};
use super::{NS_OWNER, NS_PUBLISH_OPTIONS, NS_PUBSUB, NS_RSM, NS_SUBSCRIBE_OPTIONS, app_error};

/// Sizes the parser refuses beyond.
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Longest node name, bytes.
    pub max_node_bytes: usize,
    /// Longest item id, bytes.
    pub max_id_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_node_bytes: 1024,
            max_id_bytes: 1024,
        }
    }
}

/// Submitted data form fields: `(var, values)` in order.
pub type Fields = Vec<(String, Vec<String>)>;

/// XEP-0059 paging of an items request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rsm {
    /// `<max/>`
    pub max: Option<usize>,
    /// `<after/>`: items older than this id (results are newest first).
    pub after: Option<String>,
    /// `<before/>`: items newer than this id; empty asks for the last page.
    pub before: Option<String>,
}

/// One request, by XEP-0060 section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// §8.1 create (no node: an instant node, §8.1.2), with an optional configuration.
    Create {
        /// The node, if named.
        node: Option<String>,
        /// Submitted `pubsub#node_config` fields.
        config: Option<Vec<(String, Vec<String>)>>,
    },
    /// §7.1 publish, with §7.1.5 publish-options.
    Publish {
        /// The node.
        node: String,
        /// The `<item/>`, if one was given.
        item: Option<PublishItem>,
        /// Publish-options fields (preconditions).
        options: Option<Vec<(String, Vec<String>)>>,
    },
    /// §7.2 retract.
    Retract {
        /// The node.
        node: String,
        /// The item ids.
        ids: Vec<String>,
        /// `notify` as given.
        notify: Option<bool>,
    },
    /// §6.1 subscribe.
    Subscribe {
        /// The node.
        node: String,
        /// The JID to subscribe, as given.
        jid: String,
    },
    /// §6.2 unsubscribe.
    Unsubscribe {
        /// The node.
        node: String,
        /// The JID, as given.
        jid: String,
        /// The subscription id, if given.
        subid: Option<String>,
    },
    /// §6.3 subscription options, get (`fields` None) or set.
    Options {
        /// The node.
        node: String,
        /// The JID, as given.
        jid: String,
        /// Submitted `pubsub#subscribe_options` fields, for a set.
        fields: Option<Vec<(String, Vec<String>)>>,
    },
    /// §6.5 items retrieval.
    Items {
        /// The node.
        node: String,
        /// `max_items`.
        max_items: Option<usize>,
        /// Requested ids (§6.5.8), empty for all.
        ids: Vec<String>,
        /// XEP-0059 paging.
        rsm: Option<Rsm>,
    },
    /// §5.6 the requester's subscriptions (optionally for one node).
    Subscriptions {
        /// The node, if given.
        node: Option<String>,
    },
    /// §5.7 the requester's affiliations (optionally for one node).
    Affiliations {
        /// The node, if given.
        node: Option<String>,
    },
    /// §6.4 default subscription options.
    DefaultSubscriptionOptions,
    /// §8.2 configure, get (`fields` None) or set (`Some(None)`: a cancelled form).
    Configure {
        /// The node.
        node: String,
        /// For a set: the submitted fields, or None for `type='cancel'`.
        fields: Option<Option<Fields>>,
    },
    /// §8.3 the default node configuration.
    DefaultConfig,
    /// §8.4 delete, with an optional redirect URI.
    Delete {
        /// The node.
        node: String,
        /// `<redirect uri/>`.
        redirect: Option<String>,
    },
    /// §8.5 purge.
    Purge {
        /// The node.
        node: String,
    },
    /// §8.8 manage subscriptions: get (`changes` None) or set.
    OwnerSubscriptions {
        /// The node.
        node: String,
        /// `(jid, subscription state)` changes for a set.
        changes: Option<Vec<(String, String)>>,
    },
    /// §8.9 manage affiliations: get (`changes` None) or set.
    OwnerAffiliations {
        /// The node.
        node: String,
        /// `(jid, affiliation)` changes for a set.
        changes: Option<Vec<(String, String)>>,
    },
}

/// A published `<item/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishItem {
    /// Its id, if given.
    pub id: Option<String>,
    /// Its one payload element, if any.
    pub payload: Option<Element>,
}

/// Affiliations an owner may set (XEP-0060 §4.1).
pub const AFFILIATIONS: &[&str] = &[
    "owner",
    "publisher",
    "publish-only",
    "member",
    "none",
    "outcast",
];

fn bad(text: &str) -> StanzaError {
    StanzaError::new(Condition::BadRequest).with_text(text)
}

/// Parses the payload of an IQ `get` (`set` false) or `set` in `pubsub` or `pubsub#owner`.
pub fn parse(set: bool, payload: &Element, limits: ParseLimits) -> Result<Request, StanzaError> {
    let owner = payload.is("pubsub", NS_OWNER);
    if !owner && !payload.is("pubsub", NS_PUBSUB) {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    let ns = payload.ns();
    // The one action element; the companions (`<configure/>` after `<create/>`,
    // `<publish-options/>`, `<options/>` after `<subscribe/>`, RSM) come beside it.
    let companions: &[&str] = if owner {
        &[]
    } else {
        &["configure", "publish-options", "options"]
    };
    let mut actions = payload
        .children()
        .filter(|c| c.ns() == ns && !companions.contains(&c.name()));
    let action = actions.next();
    let action = match (action, actions.next()) {
        (Some(a), None) => a,
        (None, None) => {
            // A lone `<options/>` is the options request itself (§6.3).
            match payload.get_child("options", NS_PUBSUB) {
                Some(o) if !owner => o,
                _ => return Err(bad("no pubsub request")),
            }
        }
        _ => return Err(bad("more than one pubsub request")),
    };
    let node = |required: bool| node_attr(action, required, limits);
    let want = |wanted_set: bool| {
        if set == wanted_set {
            Ok(())
        } else {
            Err(bad(if wanted_set {
                "this request is an IQ set"
            } else {
                "this request is an IQ get"
            }))
        }
    };
    if owner {
        return match action.name() {
            "configure" => {
                let node = node(true)?.unwrap_or_default();
                let fields = if set {
                    let x = action
                        .get_child("x", form::NS)
                        .ok_or_else(|| bad("configure needs a data form"))?;
                    let f = form::parse(x)?;
                    Some(match f.kind.as_str() {
                        "cancel" => None,
                        "submit" => Some(node_config_fields(f)?),
                        _ => return Err(bad("the configuration form must be submitted")),
                    })
                } else {
                    None
                };
                Ok(Request::Configure { node, fields })
            }
            "default" => {
                want(false)?;
                Ok(Request::DefaultConfig)
            }
            "delete" => {
                want(true)?;
                let node = node(true)?.unwrap_or_default();
                let redirect = action
                    .get_child("redirect", NS_OWNER)
                    .and_then(|r| r.attr("uri"))
                    .map(str::to_string);
                Ok(Request::Delete { node, redirect })
            }
            "purge" => {
                want(true)?;
                Ok(Request::Purge {
                    node: node(true)?.unwrap_or_default(),
                })
            }
            "subscriptions" => {
                let node = node(true)?.unwrap_or_default();
                let changes = if set {
                    Some(owner_list(action, "subscription", "subscription")?)
                } else {
                    None
                };
                Ok(Request::OwnerSubscriptions { node, changes })
            }
            "affiliations" => {
                let node = node(true)?.unwrap_or_default();
                let changes = if set {
                    let list = owner_list(action, "affiliation", "affiliation")?;
                    if let Some((_, a)) = list
                        .iter()
                        .find(|(_, a)| !AFFILIATIONS.contains(&a.as_str()))
                    {
                        return Err(bad(&format!("unknown affiliation {a:?}")));
                    }
                    Some(list)
                } else {
                    None
                };
                Ok(Request::OwnerAffiliations { node, changes })
            }
            _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
        };
    }
    match action.name() {
        "create" => {
            want(true)?;
            let node = node(false)?;
            let config = match payload
                .get_child("configure", NS_PUBSUB)
                .and_then(|c| c.get_child("x", form::NS))
            {
                None => None,
                Some(x) => {
                    let f = form::parse(x)?;
                    if f.kind != "submit" {
                        return Err(bad("the configuration form must be submitted"));
                    }
                    Some(node_config_fields(f)?)
                }
            };
            Ok(Request::Create { node, config })
        }
        "publish" => {
            want(true)?;
            let node = node(true)?.unwrap_or_default();
            let mut items = action.children().filter(|c| c.is("item", NS_PUBSUB));
            let item = match (items.next(), items.next()) {
                (None, _) => None,
                (Some(i), None) => Some(publish_item(i, limits)?),
                // §7.1.3.5: one item per request.
                (Some(_), Some(_)) => {
                    return Err(app_error(Condition::BadRequest, "invalid-payload"));
                }
            };
            let options = match payload
                .get_child("publish-options", NS_PUBSUB)
                .and_then(|c| c.get_child("x", form::NS))
            {
                None => None,
                Some(x) => {
                    let f = form::parse(x)?;
                    if f.form_type.as_deref() != Some(NS_PUBLISH_OPTIONS) {
                        return Err(bad("publish-options need the publish-options FORM_TYPE"));
                    }
                    Some(f.fields)
                }
            };
            Ok(Request::Publish {
                node,
                item,
                options,
            })
        }
        "retract" => {
            want(true)?;
            let node = node(true)?.unwrap_or_default();
            let notify = match action.attr("notify") {
                None => None,
                Some("1" | "true") => Some(true),
                Some("0" | "false") => Some(false),
                Some(_) => return Err(bad("notify is a boolean")),
            };
            let mut ids = Vec::new();
            for i in action.children().filter(|c| c.is("item", NS_PUBSUB)) {
                ids.push(
                    item_id(i, limits)?
                        .ok_or_else(|| app_error(Condition::BadRequest, "item-required"))?,
                );
            }
            if ids.is_empty() {
                // §7.2.3.4
                return Err(app_error(Condition::BadRequest, "item-required"));
            }
            Ok(Request::Retract { node, ids, notify })
        }
        "subscribe" => {
            want(true)?;
            let node = node(true)?.unwrap_or_default();
            Ok(Request::Subscribe {
                node,
                jid: jid_attr(action)?,
            })
        }
        "unsubscribe" => {
            want(true)?;
            let node = node(true)?.unwrap_or_default();
            Ok(Request::Unsubscribe {
                node,
                jid: jid_attr(action)?,
                subid: action.attr("subid").map(str::to_string),
            })
        }
        "options" => {
            let node = node(true)?.unwrap_or_default();
            let fields = if set {
                let x = action
                    .get_child("x", form::NS)
                    .ok_or_else(|| bad("options need a data form"))?;
                let f = form::parse(x)?;
                if f.form_type.as_deref() != Some(NS_SUBSCRIBE_OPTIONS) {
                    return Err(bad("options need the subscribe_options FORM_TYPE"));
                }
                Some(f.fields)
            } else {
                None
            };
            Ok(Request::Options {
                node,
                jid: jid_attr(action)?,
                fields,
            })
        }
        "items" => {
            want(false)?;
            let node = node(true)?.unwrap_or_default();
            let max_items = match action.attr("max_items") {
                None => None,
                Some(v) => Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| bad("max_items is a number"))?,
                ),
            };
            let mut ids = Vec::new();
            for i in action.children().filter(|c| c.is("item", NS_PUBSUB)) {
                if let Some(id) = item_id(i, limits)? {
                    ids.push(id);
                }
            }
            let rsm = match payload.get_child("set", NS_RSM) {
                None => None,
                Some(set) => Some(parse_rsm(set, limits)?),
            };
            Ok(Request::Items {
                node,
                max_items,
                ids,
                rsm,
            })
        }
        "subscriptions" => {
            want(false)?;
            Ok(Request::Subscriptions { node: node(false)? })
        }
        "affiliations" => {
            want(false)?;
            Ok(Request::Affiliations { node: node(false)? })
        }
        "default" => {
            want(false)?;
            Ok(Request::DefaultSubscriptionOptions)
        }
        _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
    }
}

/// The `node` attribute: required (§7.1.3.3 and others: `nodeid-required`) or optional; an
/// empty one counts as absent; a name beyond the limit is `not-acceptable`.
fn node_attr(
    el: &Element,
    required: bool,
    limits: ParseLimits,
) -> Result<Option<String>, StanzaError> {
    match el.attr("node").filter(|n| !n.is_empty()) {
        None if required => Err(app_error(Condition::BadRequest, "nodeid-required")),
        None => Ok(None),
        Some(n) if n.len() > limits.max_node_bytes => {
            Err(StanzaError::new(Condition::NotAcceptable).with_text("node name too long"))
        }
        Some(n) => Ok(Some(n.to_string())),
    }
}

fn item_id(item: &Element, limits: ParseLimits) -> Result<Option<String>, StanzaError> {
    match item.attr("id").filter(|i| !i.is_empty()) {
        None => Ok(None),
        Some(id) if id.len() > limits.max_id_bytes => {
            Err(StanzaError::new(Condition::NotAcceptable).with_text("item id too long"))
        }
        Some(id) => Ok(Some(id.to_string())),
    }
}

fn publish_item(item: &Element, limits: ParseLimits) -> Result<PublishItem, StanzaError> {
    let id = item_id(item, limits)?;
    let mut payloads = item.children();
    let payload = match (payloads.next(), payloads.next()) {
        (None, _) => None,
        (Some(p), None) => Some(p.clone()),
        // §7.1.3.5: more than one payload element.
        (Some(_), Some(_)) => return Err(app_error(Condition::BadRequest, "invalid-payload")),
    };
    Ok(PublishItem { id, payload })
}

/// §6.1.3.1 and friends: the `jid` attribute; missing is `bad-request` + `<invalid-jid/>`.
fn jid_attr(el: &Element) -> Result<String, StanzaError> {
    el.attr("jid")
        .filter(|j| !j.is_empty())
        .map(str::to_string)
        .ok_or_else(|| app_error(Condition::BadRequest, "invalid-jid"))
}

/// `<subscription jid subscription/>` or `<affiliation jid affiliation/>` children of an owner
/// set, as `(jid, value)`.
fn owner_list(el: &Element, child: &str, attr: &str) -> Result<Vec<(String, String)>, StanzaError> {
    // An owner list change names a few entities at a time; this bounds the work per request.
    const MAX: usize = 256;
    let mut out = Vec::new();
    for c in el.children().filter(|c| c.is(child, NS_OWNER)) {
        let (Some(j), Some(v)) = (c.attr("jid"), c.attr(attr)) else {
            return Err(bad(&format!("each {child} needs jid and {attr}")));
        };
        out.push((j.to_string(), v.to_string()));
        if out.len() > MAX {
            return Err(StanzaError::new(Condition::PolicyViolation).with_text("too many changes"));
        }
    }
    Ok(out)
}

fn node_config_fields(f: Submitted) -> Result<Vec<(String, Vec<String>)>, StanzaError> {
    match f.form_type.as_deref() {
        None | Some(super::NS_NODE_CONFIG) => Ok(f.fields),
        Some(_) => Err(bad("not a node configuration form")),
    }
}

/// XEP-0059 §2: `<max/>`, `<after/>`, `<before/>` (empty `<before/>`: the last page).
fn parse_rsm(set: &Element, limits: ParseLimits) -> Result<Rsm, StanzaError> {
    let text = |name: &str| set.get_child(name, NS_RSM).map(Element::text);
    let max = match text("max") {
        None => None,
        Some(m) => Some(
            m.trim()
                .parse::<usize>()
                .map_err(|_| bad("RSM max is a number"))?,
        ),
    };
    let id = |v: Option<String>| -> Result<Option<String>, StanzaError> {
        match v {
            Some(v) if v.len() > limits.max_id_bytes => {
                Err(StanzaError::new(Condition::NotAcceptable).with_text("RSM id too long"))
            }
            other => Ok(other),
        }
    };
    if set.get_child("index", NS_RSM).is_some() {
        // XEP-0059 §2.6 index paging is optional; items page by id only.
        return Err(StanzaError::new(Condition::FeatureNotImplemented));
    }
    Ok(Rsm {
        max,
        after: id(text("after"))?,
        before: id(text("before"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        canto_core::roster::decode_element(xml.as_bytes()).unwrap_or_else(|| panic!("{xml}"))
    }

    fn p(set: bool, xml: &str) -> Result<Request, StanzaError> {
        parse(set, &el(xml), ParseLimits::default())
    }

    fn app(e: &StanzaError) -> Option<String> {
        e.app.as_ref().map(|a| a.name().to_string())
    }

    #[test]
    fn publish_with_item_and_options() {
        let r = p(
            true,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='n'><item id='i'><x xmlns='urn:x'/></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#access_model'><value>open</value></field></x></publish-options></pubsub>",
        );
        let Ok(Request::Publish {
            node,
            item: Some(item),
            options: Some(options),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(node, "n");
        assert_eq!(item.id.as_deref(), Some("i"));
        assert_eq!(
            item.payload.map(|p| p.ns().to_string()),
            Some("urn:x".into())
        );
        assert_eq!(
            options,
            vec![("pubsub#access_model".into(), vec!["open".into()])]
        );
    }

    #[test]
    fn malformed_requests_get_the_xep_errors() {
        let ps = "http://jabber.org/protocol/pubsub";
        let cases: &[(bool, String, Condition, Option<&str>)] = &[
            (
                true,
                format!("<pubsub xmlns='{ps}'><publish/></pubsub>"),
                Condition::BadRequest,
                Some("nodeid-required"),
            ),
            (
                true,
                format!(
                    "<pubsub xmlns='{ps}'><publish node='n'><item><a xmlns='x'/><b xmlns='x'/></item></publish></pubsub>"
                ),
                Condition::BadRequest,
                Some("invalid-payload"),
            ),
            (
                true,
                format!("<pubsub xmlns='{ps}'><publish node='n'><item/><item/></publish></pubsub>"),
                Condition::BadRequest,
                Some("invalid-payload"),
            ),
            (
                true,
                format!("<pubsub xmlns='{ps}'><retract node='n'/></pubsub>"),
                Condition::BadRequest,
                Some("item-required"),
            ),
            (
                true,
                format!("<pubsub xmlns='{ps}'><subscribe node='n'/></pubsub>"),
                Condition::BadRequest,
                Some("invalid-jid"),
            ),
            (
                false,
                format!("<pubsub xmlns='{ps}'><publish node='n'/></pubsub>"),
                Condition::BadRequest,
                None,
            ),
            (
                true,
                format!("<pubsub xmlns='{ps}'><publish node='n'/><retract node='n'/></pubsub>"),
                Condition::BadRequest,
                None,
            ),
            (
                false,
                format!("<pubsub xmlns='{ps}'><items node='n' max_items='x'/></pubsub>"),
                Condition::BadRequest,
                None,
            ),
            (
                false,
                format!("<pubsub xmlns='{ps}'><frobnicate node='n'/></pubsub>"),
                Condition::FeatureNotImplemented,
                None,
            ),
            (
                true,
                format!(
                    "<pubsub xmlns='{ps}#owner'><affiliations node='n'><affiliation jid='a@b' affiliation='king'/></affiliations></pubsub>"
                ),
                Condition::BadRequest,
                None,
            ),
            (
                true,
                format!(
                    "<pubsub xmlns='{ps}'><publish node='{}'/></pubsub>",
                    "n".repeat(2000)
                ),
                Condition::NotAcceptable,
                None,
            ),
            (
                true,
                format!(
                    "<pubsub xmlns='{ps}'><publish node='n'><item id='{}'/></publish></pubsub>",
                    "i".repeat(2000)
                ),
                Condition::NotAcceptable,
                None,
            ),
        ];
        for (set, xml, cond, app_name) in cases {
            let e = p(*set, xml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {xml}"));
            assert_eq!(e.condition, *cond, "{xml}");
            assert_eq!(app(&e).as_deref(), *app_name, "{xml}");
        }
    }

    #[test]
    fn items_with_rsm_and_ids() {
        let r = p(
            false,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n' max_items='2'>\
             <item id='a'/><item id='b'/></items>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>5</max><after>z</after></set></pubsub>",
        );
        assert_eq!(
            r,
            Ok(Request::Items {
                node: "n".into(),
                max_items: Some(2),
                ids: vec!["a".into(), "b".into()],
                rsm: Some(Rsm {
                    max: Some(5),
                    after: Some("z".into()),
                    before: None
                }),
            })
        );
    }

    #[test]
    fn owner_requests() {
        let o = "http://jabber.org/protocol/pubsub#owner";
        assert_eq!(
            p(
                true,
                &format!(
                    "<pubsub xmlns='{o}'><delete node='n'><redirect uri='xmpp:x?;node=m'/></delete></pubsub>"
                )
            ),
            Ok(Request::Delete {
                node: "n".into(),
                redirect: Some("xmpp:x?;node=m".into())
            })
        );
        assert_eq!(
            p(
                true,
                &format!(
                    "<pubsub xmlns='{o}'><configure node='n'><x xmlns='jabber:x:data' type='cancel'/></configure></pubsub>"
                )
            ),
            Ok(Request::Configure {
                node: "n".into(),
                fields: Some(None)
            })
        );
        assert_eq!(
            p(
                false,
                &format!("<pubsub xmlns='{o}'><configure node='n'/></pubsub>")
            ),
            Ok(Request::Configure {
                node: "n".into(),
                fields: None
            })
        );
    }
}

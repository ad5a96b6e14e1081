//! Publish-subscribe: one engine (XEP-0060, [`engine`]) behind two modules — `pep`, a service
//! on every account (XEP-0163, Prosody's mod_pep, [`pep`]), and `pubsub`, hosted services at
//! `pubsub.HOST` and wherever `[services."DOMAIN"] kind = "pubsub"` says (Prosody's
//! mod_pubsub, [`service`]).

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;

pub mod caps;
pub mod config;
pub mod engine;
pub mod form;
pub mod pep;
pub mod request;
pub mod service;

/// XEP-0060 namespaces.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// Owner use cases.
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// Event notifications.
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// Application-specific error conditions.
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// The node configuration form.
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// The publish-options form.
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// The subscription options form.
pub const NS_SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";
/// The subscription authorization form (§8.6).
pub const NS_SUBSCRIBE_AUTH: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";
/// Node meta-data in disco#info (§5.4).
pub const NS_META_DATA: &str = "http://jabber.org/protocol/pubsub#meta-data";
/// XEP-0059 result set management.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";

/// A stanza error with an application condition in XEP-0060's `pubsub#errors` namespace.
pub fn app_error(condition: Condition, app: &str) -> StanzaError {
    StanzaError::new(condition).with_app(Element::new(app, NS_ERRORS))
}

/// `feature-not-implemented` with `<unsupported feature='…'/>` (XEP-0060 §7.1.3.2 and others).
pub fn unsupported(feature: &str) -> StanzaError {
    StanzaError::new(Condition::FeatureNotImplemented)
        .with_app(Element::new("unsupported", NS_ERRORS).with_attr("feature", feature))
}

/// XEP-0060 §7.1.5: publish-options that the node does not meet.
pub fn precondition_not_met() -> StanzaError {
    app_error(Condition::Conflict, "precondition-not-met")
}

/// The XEP-0060 §10 features both services offer (disco#info).
pub const FEATURES: &[&str] = &[
    "access-authorize",
    "access-open",
    "access-presence",
    "access-roster",
    "access-whitelist",
    "auto-create",
    "config-node",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "filtered-notifications",
    "get-pending",
    "instant-nodes",
    "item-ids",
    "last-published",
    "manage-affiliations",
    "manage-subscriptions",
    "member-affiliation",
    "meta-data",
    "modify-affiliations",
    "outcast-affiliation",
    "persistent-items",
    "publish",
    "publish-options",
    "publisher-affiliation",
    "publish-only-affiliation",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-default",
    "retrieve-items",
    "retrieve-subscriptions",
    "rsm",
    "subscribe",
    "subscription-options",
];

/// Limits shared by `[pep]` and `[pubsub]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Nodes per service (per account for PEP).
    pub max_nodes: usize,
    /// The largest `pubsub#max_items` a node may have (`max` means this).
    pub max_items: u64,
    /// Largest item payload, bytes serialized.
    pub max_item_bytes: usize,
    /// Subscriptions per node.
    pub max_subscriptions: usize,
    /// Longest node name and item id, bytes.
    pub max_id_bytes: usize,
}

impl Limits {
    fn pep() -> Limits {
        Limits {
            // OMEMO keeps one bundle node per device, so a few hundred leave room.
            max_nodes: 256,
            // Prosody's pep_max_items.
            max_items: 256,
            // Prosody's c2s stanza limit is 256 KiB; an item is one stanza's payload.
            max_item_bytes: 256 * 1024,
            max_subscriptions: 1000,
            max_id_bytes: 1024,
        }
    }

    fn service() -> Limits {
        Limits {
            max_nodes: 10_000,
            max_items: 256,
            max_item_bytes: 256 * 1024,
            max_subscriptions: 10_000,
            max_id_bytes: 1024,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_nodes == 0
            || self.max_items == 0
            || self.max_subscriptions == 0
            || self.max_item_bytes < 1024
            || self.max_id_bytes < 64
        {
            return Err(
                "max_nodes, max_items and max_subscriptions must be positive, max_item_bytes at least 1024, max_id_bytes at least 64"
                    .into(),
            );
        }
        Ok(())
    }

    /// The engine's view.
    pub fn engine(&self) -> engine::Limits {
        engine::Limits {
            max_nodes: self.max_nodes,
            max_items: self.max_items,
            max_item_bytes: self.max_item_bytes,
            max_subscriptions: self.max_subscriptions,
            max_page: usize::try_from(self.max_items)
                .unwrap_or(usize::MAX)
                .clamp(1, 1000),
            parse: request::ParseLimits {
                max_node_bytes: self.max_id_bytes,
                max_id_bytes: self.max_id_bytes,
            },
        }
    }
}

/// The `<event/>` message a notification is (XEP-0060 §7.1.2.1): `from` the service, `to` one
/// recipient, of the node's notification type.
pub fn event_message(from: &str, to: &str, kind: &str, event_child: Element) -> Element {
    Element::new("message", canto_stanza::ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", kind)
        .with_attr("id", engine::new_id())
        .with_child(Element::new("event", NS_EVENT).with_child(event_child))
}

/// The `<event/>` child an [`engine::Event`] is notified as, if it is notified at all.
pub fn event_child(ev: &engine::Event) -> Option<(String, Element)> {
    use engine::Event;
    Some(match ev {
        Event::Published { node, config, item } => {
            if !config.deliver_notifications {
                return None;
            }
            (
                node.clone(),
                Element::new("items", NS_EVENT)
                    .with_attr("node", node)
                    .with_child(item.clone()),
            )
        }
        Event::Retracted { node, ids, .. } => {
            let mut items = Element::new("items", NS_EVENT).with_attr("node", node);
            for id in ids {
                items.push_child(Element::new("retract", NS_EVENT).with_attr("id", id));
            }
            (node.clone(), items)
        }
        Event::Purged { node, .. } => (
            node.clone(),
            Element::new("purge", NS_EVENT).with_attr("node", node),
        ),
        Event::Deleted { node, redirect, .. } => {
            let mut d = Element::new("delete", NS_EVENT).with_attr("node", node);
            if let Some(uri) = redirect {
                d.push_child(Element::new("redirect", NS_EVENT).with_attr("uri", uri));
            }
            (node.clone(), d)
        }
        Event::Configured { node, config } => {
            let mut c = Element::new("configuration", NS_EVENT).with_attr("node", node);
            // §8.2.4: the form only when payloads are delivered.
            if config.deliver_payloads {
                c.push_child(config.to_result_form());
            }
            (node.clone(), c)
        }
        Event::Subscribed { .. } => return None,
    })
}

/// The node's meta-data form for disco#info on a node (XEP-0060 §5.4).
pub fn meta_data(config: &config::NodeConfig, owners: &[String]) -> Element {
    let mut x = form::new_form("result", NS_META_DATA);
    let text = |var: &str, v: &str| form::field(var, "", form::Kind::Text, &[v.to_string()]);
    x.push_child(text("pubsub#title", &config.title));
    x.push_child(text("pubsub#description", &config.description));
    x.push_child(text("pubsub#type", &config.payload_type));
    x.push_child(text(
        "pubsub#access_model",
        config::access_name(config.access_model),
    ));
    x.push_child(form::field(
        "pubsub#publish_model",
        "",
        form::Kind::Text,
        &config.values("pubsub#publish_model").unwrap_or_default(),
    ));
    x.push_child(form::field(
        "pubsub#max_items",
        "",
        form::Kind::Text,
        &config.values("pubsub#max_items").unwrap_or_default(),
    ));
    x.push_child(form::field(
        "pubsub#owner",
        "",
        form::Kind::JidMulti,
        owners,
    ));
    x
}

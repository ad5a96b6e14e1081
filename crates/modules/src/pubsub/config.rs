//! Node configuration (XEP-0060 §8.2, the `pubsub#node_config` form, §16.4.3 field registry),
//! its defaults for PEP (XEP-0163 §4, XEP-0223) and for a service, and publish-options
//! preconditions (XEP-0060 §7.1.5).

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;
use serde::{Deserialize, Serialize};

use super::form::{self, Kind};
use super::{NS_NODE_CONFIG, precondition_not_met};

/// XEP-0060 §4.5: who may subscribe and retrieve items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone.
    Open,
    /// Entities subscribed to the owner's presence.
    Presence,
    /// Entities in allowed roster groups of the owner.
    Roster,
    /// Entities the owner affiliated (member, publisher, owner).
    Whitelist,
    /// Subscriptions need the owner's approval.
    Authorize,
}

/// XEP-0060 §16.4.3 `pubsub#publish_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishModel {
    /// Owners and publishers.
    Publishers,
    /// Also subscribers.
    Subscribers,
    /// Anyone who may access the node.
    Open,
}

/// XEP-0060 §16.4.3 `pubsub#send_last_published_item`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    /// Never.
    Never,
    /// When an entity subscribes.
    OnSub,
    /// When it subscribes, and when it comes online (XEP-0163 §4.3.1).
    OnSubAndPresence,
}

/// XEP-0060 §16.4.3 `pubsub#itemreply`: whose JID goes in an item's `publisher`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemReply {
    /// The node owner's.
    Owner,
    /// The publisher's.
    Publisher,
    /// None.
    None,
}

/// A node's configuration, stored with the node (TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// `pubsub#title`
    pub title: String,
    /// `pubsub#description`
    pub description: String,
    /// `pubsub#type`: the payload's namespace, informational.
    pub payload_type: String,
    /// `pubsub#max_items`; `None` is `max`, the service's largest (stored as `"max"`).
    #[serde(with = "max_items_serde")]
    pub max_items: Option<u64>,
    /// `pubsub#persist_items`
    pub persist_items: bool,
    /// `pubsub#access_model`
    pub access_model: AccessModel,
    /// `pubsub#roster_groups_allowed`
    pub roster_groups_allowed: Vec<String>,
    /// `pubsub#publish_model`
    pub publish_model: PublishModel,
    /// `pubsub#send_last_published_item`
    pub send_last_published_item: SendLast,
    /// `pubsub#deliver_notifications`
    pub deliver_notifications: bool,
    /// `pubsub#deliver_payloads`
    pub deliver_payloads: bool,
    /// `pubsub#notification_type`: `headline` or `normal`.
    pub notification_type: String,
    /// `pubsub#notify_config`
    pub notify_config: bool,
    /// `pubsub#notify_delete`
    pub notify_delete: bool,
    /// `pubsub#notify_retract`
    pub notify_retract: bool,
    /// `pubsub#itemreply`
    pub itemreply: ItemReply,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::service()
    }
}

const ACCESS: &[&str] = &["authorize", "open", "presence", "roster", "whitelist"];
const PUBLISH: &[&str] = &["publishers", "subscribers", "open"];
const SEND_LAST: &[&str] = &["never", "on_sub", "on_sub_and_presence"];
const NOTIFICATION: &[&str] = &["normal", "headline"];
const ITEMREPLY: &[&str] = &["owner", "publisher", "none"];

/// Every field of the configuration form, in the order it is shown.
pub const FIELDS: &[&str] = &[
    "pubsub#title",
    "pubsub#description",
    "pubsub#type",
    "pubsub#max_items",
    "pubsub#persist_items",
    "pubsub#access_model",
    "pubsub#roster_groups_allowed",
    "pubsub#publish_model",
    "pubsub#send_last_published_item",
    "pubsub#deliver_notifications",
    "pubsub#deliver_payloads",
    "pubsub#notification_type",
    "pubsub#notify_config",
    "pubsub#notify_delete",
    "pubsub#notify_retract",
    "pubsub#itemreply",
];

impl NodeConfig {
    /// A PEP node's defaults (XEP-0163 §4: presence access, one item, last item on presence;
    /// notifications as headlines, as Prosody's mod_pep sends them).
    pub fn pep() -> NodeConfig {
        NodeConfig {
            max_items: Some(1),
            access_model: AccessModel::Presence,
            send_last_published_item: SendLast::OnSubAndPresence,
            notification_type: "headline".into(),
            ..NodeConfig::service()
        }
    }

    /// A service node's defaults (XEP-0060 §8.1.3 leaves them to the service): open, ten items.
    pub fn service() -> NodeConfig {
        NodeConfig {
            title: String::new(),
            description: String::new(),
            payload_type: String::new(),
            max_items: Some(10),
            persist_items: true,
            access_model: AccessModel::Open,
            roster_groups_allowed: Vec::new(),
            publish_model: PublishModel::Publishers,
            send_last_published_item: SendLast::Never,
            deliver_notifications: true,
            deliver_payloads: true,
            notification_type: "headline".into(),
            notify_config: false,
            notify_delete: true,
            notify_retract: true,
            itemreply: ItemReply::None,
        }
    }

    /// The number of items kept, with `max` resolved against the service's largest.
    pub fn keep(&self, service_max: u64) -> u64 {
        self.max_items.unwrap_or(service_max).min(service_max)
    }

    /// A field's values as the form shows them.
    pub fn values(&self, var: &str) -> Option<Vec<String>> {
        let b = |v: bool| vec![if v { "1" } else { "0" }.to_string()];
        let s = |v: &str| vec![v.to_string()];
        Some(match var {
            "pubsub#title" => s(&self.title),
            "pubsub#description" => s(&self.description),
            "pubsub#type" => s(&self.payload_type),
            "pubsub#max_items" => match self.max_items {
                Some(n) => vec![n.to_string()],
                None => s("max"),
            },
            "pubsub#persist_items" => b(self.persist_items),
            "pubsub#access_model" => s(access_name(self.access_model)),
            "pubsub#roster_groups_allowed" => self.roster_groups_allowed.clone(),
            "pubsub#publish_model" => s(match self.publish_model {
                PublishModel::Publishers => "publishers",
                PublishModel::Subscribers => "subscribers",
                PublishModel::Open => "open",
            }),
            "pubsub#send_last_published_item" => s(match self.send_last_published_item {
                SendLast::Never => "never",
                SendLast::OnSub => "on_sub",
                SendLast::OnSubAndPresence => "on_sub_and_presence",
            }),
            "pubsub#deliver_notifications" => b(self.deliver_notifications),
            "pubsub#deliver_payloads" => b(self.deliver_payloads),
            "pubsub#notification_type" => s(&self.notification_type),
            "pubsub#notify_config" => b(self.notify_config),
            "pubsub#notify_delete" => b(self.notify_delete),
            "pubsub#notify_retract" => b(self.notify_retract),
            "pubsub#itemreply" => s(match self.itemreply {
                ItemReply::Owner => "owner",
                ItemReply::Publisher => "publisher",
                ItemReply::None => "none",
            }),
            _ => return None,
        })
    }

    /// Applies submitted fields (XEP-0060 §8.2.4). An unknown field or a value that does not
    /// parse or exceeds the service's `max_items` is `not-acceptable` (§8.2.5.4); nothing
    /// changes then.
    pub fn apply(
        &mut self,
        fields: &[(String, Vec<String>)],
        service_max: u64,
    ) -> Result<(), StanzaError> {
        let mut next = self.clone();
        for (var, values) in fields {
            next.set(var, values, service_max)
                .map_err(|why| StanzaError::new(Condition::NotAcceptable).with_text(why))?;
        }
        *self = next;
        Ok(())
    }

    fn set(&mut self, var: &str, values: &[String], service_max: u64) -> Result<(), String> {
        let single = || form::single(values).ok_or_else(|| format!("{var} takes one value"));
        let boolean = || form::boolean(values).ok_or_else(|| format!("{var} is a boolean"));
        let pick = |options: &[&str]| -> Result<String, String> {
            let v = single()?;
            if options.contains(&v) {
                Ok(v.to_string())
            } else {
                Err(format!("{var} does not take {v:?}"))
            }
        };
        // Titles and descriptions are for people: a short line each.
        const MAX_TEXT: usize = 1024;
        match var {
            "pubsub#title" | "pubsub#description" | "pubsub#type" => {
                let v = single()?;
                if v.len() > MAX_TEXT {
                    return Err(format!("{var} is too long"));
                }
                let v = v.to_string();
                match var {
                    "pubsub#title" => self.title = v,
                    "pubsub#description" => self.description = v,
                    _ => self.payload_type = v,
                }
            }
            "pubsub#max_items" => {
                let v = single()?.trim();
                self.max_items = if v == "max" {
                    None
                } else {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| "pubsub#max_items is a number or max".to_string())?;
                    if n == 0 || n > service_max {
                        return Err(format!("pubsub#max_items must be 1 to {service_max}"));
                    }
                    Some(n)
                };
            }
            "pubsub#persist_items" => self.persist_items = boolean()?,
            "pubsub#access_model" => {
                self.access_model = match pick(ACCESS)?.as_str() {
                    "open" => AccessModel::Open,
                    "presence" => AccessModel::Presence,
                    "roster" => AccessModel::Roster,
                    "whitelist" => AccessModel::Whitelist,
                    _ => AccessModel::Authorize,
                }
            }
            "pubsub#roster_groups_allowed" => {
                if values.iter().any(|g| g.len() > MAX_TEXT) {
                    return Err("a roster group name is too long".into());
                }
                self.roster_groups_allowed = values.to_vec();
            }
            "pubsub#publish_model" => {
                self.publish_model = match pick(PUBLISH)?.as_str() {
                    "publishers" => PublishModel::Publishers,
                    "subscribers" => PublishModel::Subscribers,
                    _ => PublishModel::Open,
                }
            }
            "pubsub#send_last_published_item" => {
                self.send_last_published_item = match pick(SEND_LAST)?.as_str() {
                    "never" => SendLast::Never,
                    "on_sub" => SendLast::OnSub,
                    _ => SendLast::OnSubAndPresence,
                }
            }
            "pubsub#deliver_notifications" => self.deliver_notifications = boolean()?,
            "pubsub#deliver_payloads" => self.deliver_payloads = boolean()?,
            "pubsub#notification_type" => self.notification_type = pick(NOTIFICATION)?,
            "pubsub#notify_config" => self.notify_config = boolean()?,
            "pubsub#notify_delete" => self.notify_delete = boolean()?,
            "pubsub#notify_retract" => self.notify_retract = boolean()?,
            "pubsub#itemreply" => {
                self.itemreply = match pick(ITEMREPLY)?.as_str() {
                    "owner" => ItemReply::Owner,
                    "publisher" => ItemReply::Publisher,
                    _ => ItemReply::None,
                }
            }
            other => return Err(format!("unknown field {other}")),
        }
        Ok(())
    }

    /// XEP-0060 §7.1.5: publish-options are preconditions. Each field must already have the
    /// given value (after the same parsing a configuration gets: `max` is `max`, `true` is
    /// `1`); an unknown field or any difference is `conflict` with `<precondition-not-met/>`.
    pub fn check_preconditions(
        &self,
        fields: &[(String, Vec<String>)],
        service_max: u64,
    ) -> Result<(), StanzaError> {
        let mut wanted = self.clone();
        wanted
            .apply(fields, service_max)
            .map_err(|_| precondition_not_met())?;
        for (var, _) in fields {
            if wanted.values(var) != self.values(var) {
                return Err(precondition_not_met());
            }
        }
        Ok(())
    }

    /// The configuration form (XEP-0060 §8.2.1, `type='form'`), with the current values.
    pub fn to_form(&self, service_max: u64) -> Element {
        let mut x = form::new_form("form", NS_NODE_CONFIG);
        for var in FIELDS {
            let (label, kind) = describe(var);
            let values = self.values(var).unwrap_or_default();
            let mut f = form::field(var, label, kind, &values);
            if *var == "pubsub#max_items" {
                // XEP-0122 validation: a number up to the service's largest, or `max`.
                f.push_child(
                    Element::new("validate", "http://jabber.org/protocol/xdata-validate")
                        .with_attr("datatype", "pubsub:integer-or-max")
                        .with_child(
                            Element::new("range", "http://jabber.org/protocol/xdata-validate")
                                .with_attr("min", "1")
                                .with_attr("max", service_max.to_string()),
                        ),
                );
            }
            x.push_child(f);
        }
        x
    }

    /// The configuration as a `type='result'` form (notify_config, XEP-0060 §8.2.4).
    pub fn to_result_form(&self) -> Element {
        let mut x = form::new_form("result", NS_NODE_CONFIG);
        for var in FIELDS {
            x.push_child(form::field(
                var,
                "",
                describe(var).1,
                &self.values(var).unwrap_or_default(),
            ));
        }
        x
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        toml::to_string(self).unwrap_or_default().into_bytes()
    }

    /// Decodes what [`NodeConfig::encode`] stored; a field added since takes its default.
    pub fn decode(bytes: &[u8], defaults: &NodeConfig) -> Option<NodeConfig> {
        let text = std::str::from_utf8(bytes).ok()?;
        let table: toml::Table = toml::from_str(text).ok()?;
        let mut base = toml::Table::try_from(defaults).ok()?;
        base.extend(table);
        toml::Value::Table(base).try_into().ok()
    }
}

/// `max_items` in storage: a number, or the string `"max"` (an absent key would read as the
/// default instead).
mod max_items_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_str("max"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Some(n)),
            Raw::S(s) if s == "max" => Ok(None),
            Raw::S(_) => Err(serde::de::Error::custom("max_items is a number or \"max\"")),
        }
    }
}

/// The form name of an access model.
pub fn access_name(m: AccessModel) -> &'static str {
    match m {
        AccessModel::Open => "open",
        AccessModel::Presence => "presence",
        AccessModel::Roster => "roster",
        AccessModel::Whitelist => "whitelist",
        AccessModel::Authorize => "authorize",
    }
}

fn describe(var: &str) -> (&'static str, Kind<'static>) {
    match var {
        "pubsub#title" => ("Title", Kind::Text),
        "pubsub#description" => ("Description", Kind::Text),
        "pubsub#type" => ("Payload type", Kind::Text),
        "pubsub#max_items" => ("Most items kept", Kind::Text),
        "pubsub#persist_items" => ("Keep items in storage", Kind::Boolean),
        "pubsub#access_model" => ("Who may subscribe and retrieve items", Kind::List(ACCESS)),
        "pubsub#roster_groups_allowed" => ("Roster groups allowed", Kind::ListMulti),
        "pubsub#publish_model" => ("Who may publish", Kind::List(PUBLISH)),
        "pubsub#send_last_published_item" => ("When to send the last item", Kind::List(SEND_LAST)),
        "pubsub#deliver_notifications" => ("Deliver event notifications", Kind::Boolean),
        "pubsub#deliver_payloads" => ("Deliver payloads with notifications", Kind::Boolean),
        "pubsub#notification_type" => ("Message type of notifications", Kind::List(NOTIFICATION)),
        "pubsub#notify_config" => ("Notify when the configuration changes", Kind::Boolean),
        "pubsub#notify_delete" => ("Notify when the node is deleted", Kind::Boolean),
        "pubsub#notify_retract" => ("Notify when items are retracted", Kind::Boolean),
        "pubsub#itemreply" => ("Whose JID items carry", Kind::List(ITEMREPLY)),
        _ => ("", Kind::Text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(var: &str, v: &str) -> (String, Vec<String>) {
        (var.to_string(), vec![v.to_string()])
    }

    #[test]
    fn apply_parses_every_field_and_refuses_bad_values_atomically() {
        let mut c = NodeConfig::pep();
        let ok = c.apply(
            &[
                f("pubsub#max_items", "max"),
                f("pubsub#access_model", "whitelist"),
                f("pubsub#persist_items", "true"),
                f("pubsub#notify_retract", "0"),
                f("pubsub#itemreply", "publisher"),
            ],
            256,
        );
        assert!(ok.is_ok());
        assert_eq!(c.max_items, None);
        assert_eq!(c.keep(256), 256);
        assert_eq!(c.access_model, AccessModel::Whitelist);
        assert!(!c.notify_retract);
        let before = c.clone();
        for bad in [
            f("pubsub#max_items", "0"),
            f("pubsub#max_items", "257"),
            f("pubsub#max_items", "-1"),
            f("pubsub#access_model", "everyone"),
            f("pubsub#persist_items", "maybe"),
            f("pubsub#unknown", "1"),
        ] {
            let e = c.apply(&[f("pubsub#title", "changed"), bad.clone()], 256);
            assert_eq!(
                e.err().map(|e| e.condition),
                Some(Condition::NotAcceptable),
                "{bad:?}"
            );
            assert_eq!(c, before, "{bad:?} changed something");
        }
    }

    #[test]
    fn preconditions_compare_normalized_values() {
        let c = NodeConfig::pep();
        assert!(
            c.check_preconditions(
                &[
                    f("pubsub#access_model", "presence"),
                    f("pubsub#persist_items", "true")
                ],
                256
            )
            .is_ok()
        );
        for bad in [
            f("pubsub#access_model", "whitelist"),
            f("pubsub#max_items", "max"),
            f("pubsub#whatever", "1"),
        ] {
            let e = c.check_preconditions(std::slice::from_ref(&bad), 256).err();
            assert_eq!(e.map(|e| e.condition), Some(Condition::Conflict), "{bad:?}");
        }
    }

    #[test]
    fn storage_round_trip_and_new_fields_take_defaults() {
        let mut c = NodeConfig::pep();
        c.title = "t".into();
        c.max_items = None;
        assert_eq!(NodeConfig::decode(&c.encode(), &NodeConfig::pep()), Some(c));
        let old = b"title = \"x\"\n";
        let d = NodeConfig::decode(old, &NodeConfig::pep());
        assert_eq!(
            d.map(|d| (d.title, d.max_items)),
            Some(("x".into(), Some(1)))
        );
    }
}

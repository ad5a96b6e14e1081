//! Offline messages (XEP-0160) with a delay stamp (XEP-0203), kept in the archive store
//! `offline`. A message is committed to storage before anything is acknowledged to its sender,
//! and delivered in order at the account's next initial presence with non-negative priority.

use canto_stanza::{BareJid, Condition, StanzaError, datetime, ns};
use canto_storage::{ArchiveQuery, StorageError};
use canto_xml::Element;
use tracing::warn;

use crate::roster::decode_element;
use crate::server::Server;

const STORE: &str = "offline";

/// XEP-0160 §3: whether a message is worth storing: `normal` and `chat` messages with content;
/// chat-state notifications alone (XEP-0085) are not.
pub fn is_storable(el: &Element) -> bool {
    el.children()
        .any(|c| c.ns() != "http://jabber.org/protocol/chatstates")
}

impl Server {
    /// Stores a message for `to`; an `Err` is the error to bounce to the sender.
    pub async fn store_offline(&self, to: &BareJid, el: &Element) -> Result<(), StanzaError> {
        let Some(node) = to.node() else {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        };
        let now = datetime::now_millis();
        let mut stored = el.clone();
        // XEP-0203 §3: the server that delayed it stamps the time it received the message.
        stored.push_child(
            Element::new("delay", ns::DELAY)
                .with_attr("from", to.domain().as_str())
                .with_attr("stamp", datetime::from_millis(now)),
        );
        let max = self.config().offline.max_messages;
        let bytes = stored.to_bytes_in(ns::CLIENT);
        let from = el.attr("from").unwrap_or_default();
        match self
            .storage
            .archive
            .append(
                STORE,
                to.domain().as_str(),
                node.as_str(),
                from,
                now,
                &bytes,
                Some(max),
            )
            .await
        {
            Ok(_) => Ok(()),
            // XEP-0160 §4: over quota, tell the sender rather than lose the message.
            Err(StorageError::Limit(_)) => {
                crate::metrics::queue_drop(crate::metrics::DROP_OFFLINE_FULL);
                Err(StanzaError::new(Condition::ServiceUnavailable)
                    .with_text("the recipient's offline storage is full"))
            }
            Err(e) => {
                warn!(error = %e, "storing an offline message failed");
                Err(StanzaError::new(Condition::ResourceConstraint)
                    .with_text("storage unavailable"))
            }
        }
    }

    /// The stored messages for an account, oldest first, with their ids.
    pub async fn offline_messages(&self, bare: &BareJid) -> Vec<(String, Element)> {
        let Some(node) = bare.node() else {
            return Vec::new();
        };
        let q = ArchiveQuery::default();
        match self
            .storage
            .archive
            .query(STORE, bare.domain().as_str(), node.as_str(), &q)
            .await
        {
            Ok(items) => items
                .into_iter()
                .filter_map(|i| decode_element(&i.data).map(|e| (i.id, e)))
                .collect(),
            Err(e) => {
                warn!(error = %e, "reading offline messages failed");
                Vec::new()
            }
        }
    }

    /// Forgets delivered offline messages.
    pub async fn delete_offline(&self, bare: &BareJid, ids: &[String]) {
        let Some(node) = bare.node() else { return };
        if let Err(e) = self
            .storage
            .archive
            .delete(STORE, bare.domain().as_str(), node.as_str(), Some(ids))
            .await
        {
            warn!(error = %e, "deleting delivered offline messages failed");
        }
    }
}

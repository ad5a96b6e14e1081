//! XEP-0352 Client State Indication: while the client says it is inactive, what can wait is
//! held back and goes out, in order, with the next thing that cannot (or on `<active/>`).

use std::collections::VecDeque;
use std::sync::Arc;

use canto_stanza::{StreamCondition, ns};
use canto_xml::Element;

use super::engine::{Conn, End, stream_error};
use super::sm::SmConn;
use super::transport::Transport;

/// `urn:xmpp:csi:0`
pub(super) const CSI_NS: &str = ns::CSI;

/// What an inactive client's connection holds back (XEP-0352).
pub(super) struct CsiHold {
    pub(super) held: VecDeque<Arc<Element>>,
    /// `[csi] max_held`: one more and everything held is sent (bounds memory).
    pub(super) max: usize,
}

/// XEP-0352 §5 leaves the choice to the server; like Prosody's mod_csi_simple, what can wait
/// is presence updates (not subscription handling or errors) and messages that carry nothing
/// but chat states (XEP-0085). Messages with a body, their carbons, IQs and anything else go
/// out at once.
fn can_wait(el: &Element) -> bool {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    match el.name() {
        "presence" => matches!(el.attr("type"), None | Some("unavailable")),
        "message" => {
            el.attr("type") != Some("error")
                && el.children().next().is_some()
                && el.children().all(|c| {
                    c.ns() == CHATSTATES
                        // XEP-0280 copies of a chat state alone can wait too.
                        || (c.ns() == "urn:xmpp:carbons:2"
                            && c.children().all(|f| {
                                f.children()
                                    .filter(|m| m.name() == "message")
                                    .all(|m| m.children().all(|x| x.ns() == CHATSTATES))
                            }))
                })
        }
        _ => false,
    }
}

/// Serializes a stanza from the session's queue, recording it as unacknowledged when stream
/// management is on (XEP-0198 §4). A free function so the queue can stay borrowed.
pub(super) fn write_stanza(
    out: &mut Vec<u8>,
    sm: &mut Option<SmConn>,
    csi: &mut Option<CsiHold>,
    el: Arc<Element>,
) {
    if let Some(hold) = csi {
        if can_wait(&el) && hold.held.len() < hold.max {
            hold.held.push_back(el);
            return;
        }
        // Something that cannot wait: what was held goes first, in order.
        for h in hold.held.drain(..) {
            write_one(out, sm, h);
        }
    }
    write_one(out, sm, el);
}

pub(super) fn write_one(out: &mut Vec<u8>, sm: &mut Option<SmConn>, el: Arc<Element>) {
    let start = out.len();
    el.write_to(out, ns::CLIENT);
    if let Some(sm) = sm {
        // The bytes just written are what the unacknowledged queue keeps: serialized once.
        sm.state.sent_serialized(&out[start..]);
    }
}

impl<T: Transport> Conn<T> {
    /// `<inactive/>` and `<active/>` (XEP-0352 §3; the module `csi` offers the feature).
    pub(super) fn csi_element(&mut self, el: &Element) -> Result<(), End> {
        // XEP-0352 §3 (nonzas: not counted by XEP-0198).
        match el.name() {
            "inactive" => {
                if self.csi.is_none() {
                    self.csi = Some(CsiHold {
                        held: Default::default(),
                        max: self.ctx.server.config().csi.max_held,
                    });
                }
            }
            "active" => {
                // Everything held, in order, in this write.
                self.drain_queue();
                if let Some(hold) = self.csi.take() {
                    for h in hold.held {
                        write_one(&mut self.out, &mut self.sm, h);
                    }
                }
            }
            _ => return Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
        Ok(())
    }
}

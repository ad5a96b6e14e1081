//! XEP-0198 Stream Management counters and the unacknowledged queue, sans I/O.
//!
//! Counters are 32-bit and wrap (XEP-0198 §4: "h" is the count modulo 2^32).
//!
//! The queue holds the unacknowledged stanzas serialized, one after another in a single
//! buffer, rather than their element trees, which are released as soon as they have been
//! sent. Holding the trees until the ack — a chat message is some 16 small allocations made by
//! the sender's thread — meant freeing them after a round trip, out of cache and often into
//! another thread's malloc arena: under a message flood (`canto-bench msg --flood --sm`,
//! docs/benchmarks.md) those frees in `acknowledge` took 17 % of the server's CPU and cut the
//! throughput by 40 %. The buffer costs no allocation per stanza once it has grown. Trees are
//! built again only to replay (resumption) or re-route (a session that ends unacknowledged).

use std::collections::VecDeque;
use std::sync::Arc;

use canto_xml::{Element, Limits, StreamEvent, StreamParser};

/// The namespace the queued stanzas are serialized in (a client stream's default).
const STREAM_NS: &str = "jabber:client";

/// A queue buffer grown beyond this is given back once it is empty.
const BUFFER_KEEP: usize = 64 * 1024;

/// `urn:xmpp:sm:3`.
pub const NS: &str = "urn:xmpp:sm:3";

/// Why an ack cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmError {
    /// The peer acknowledged more than was sent (XEP-0198 §4: `<handled-count-too-high/>`).
    HandledCountTooHigh {
        /// The `h` the peer sent.
        h: u32,
        /// How many stanzas we sent in total (mod 2^32).
        send_count: u32,
    },
}

/// One direction's bookkeeping for a session with stream management enabled.
#[derive(Debug, Default)]
pub struct SmState {
    /// Stanzas received from the peer (the `h` we report).
    inbound: u32,
    /// Stanzas sent to the peer.
    sent: u32,
    /// The last `h` the peer acknowledged.
    acked: u32,
    /// The stanzas sent but not acknowledged, serialized (in a `jabber:client` stream) one
    /// after another from `head` on, oldest first.
    bytes: Vec<u8>,
    /// Where the oldest unacknowledged stanza starts in `bytes`.
    head: usize,
    /// Their lengths, oldest first.
    lens: VecDeque<usize>,
}

/// A queued stanza's tree again. Our serializer's output always parses back to the same tree
/// (checked by fuzz/fuzz_targets/xml_stream.rs), so `None` does not happen.
fn restore(bytes: &[u8]) -> Option<Arc<Element>> {
    // Our own output, so no limits but its size.
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: bytes.len().saturating_add(1),
        max_depth: usize::MAX,
        max_elements: usize::MAX,
        max_attrs: usize::MAX,
    });
    let mut out = Vec::with_capacity(2);
    p.feed(b"<s xmlns='jabber:client'>", &mut out).ok()?;
    p.feed(bytes, &mut out).ok()?;
    out.into_iter().find_map(|e| match e {
        StreamEvent::Stanza(e) => Some(Arc::new(e)),
        _ => None,
    })
}

impl SmState {
    /// A fresh state (counters at zero, XEP-0198 §3).
    pub fn new() -> SmState {
        SmState::default()
    }

    /// Counts a stanza received from the peer.
    pub fn received(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// The `h` to report in `<a/>`.
    pub fn handled(&self) -> u32 {
        self.inbound
    }

    /// Records a stanza sent to the peer. The queue keeps its serialization; `el` is released
    /// here (usually its last reference, while it is still in cache).
    pub fn sent(&mut self, el: Arc<Element>) {
        self.sent = self.sent.wrapping_add(1);
        let start = self.bytes.len();
        el.write_to(&mut self.bytes, STREAM_NS);
        drop(el);
        self.lens.push_back(self.bytes.len() - start);
    }

    /// Records a stanza sent to the peer by the bytes it was written as (serialized in a
    /// `jabber:client` stream, as [`Element::write_to`] with that namespace writes it): for a
    /// caller that has just serialized it, which spares [`SmState::sent`]'s second
    /// serialization.
    pub fn sent_serialized(&mut self, bytes: &[u8]) {
        self.sent = self.sent.wrapping_add(1);
        self.bytes.extend_from_slice(bytes);
        self.lens.push_back(bytes.len());
    }

    /// How many stanzas are unacknowledged.
    pub fn pending(&self) -> usize {
        self.lens.len()
    }

    /// The serializations of the unacknowledged stanzas, oldest first.
    fn queued(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = self.head;
        self.lens.iter().map(move |&len| {
            let b = self.bytes.get(at..at + len).unwrap_or_default();
            at += len;
            b
        })
    }

    /// Processes the peer's `h` (from `<a/>` or `<resumed/>`/`<resume/>`): drops what it
    /// acknowledges.
    pub fn acknowledge(&mut self, h: u32) -> Result<(), SmError> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.lens.len() {
            return Err(SmError::HandledCountTooHigh {
                h,
                send_count: self.sent,
            });
        }
        for len in self.lens.drain(..newly) {
            self.head += len;
        }
        if self.lens.is_empty() {
            // Usually an ack covers everything sent: nothing to move.
            self.bytes.clear();
            self.head = 0;
            if self.bytes.capacity() > BUFFER_KEEP {
                self.bytes = Vec::new();
            }
        } else if self.head > self.bytes.len() / 2 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        self.acked = h;
        Ok(())
    }

    /// The unacknowledged stanzas, oldest first (to replay on resumption or re-route when the
    /// session ends unresumed).
    pub fn take_unacked(&mut self) -> Vec<Arc<Element>> {
        let all = self.queued().filter_map(restore).collect();
        self.bytes = Vec::new();
        self.head = 0;
        self.lens.clear();
        all
    }

    /// The unacknowledged stanzas to send again on resumption (XEP-0198 §5), oldest first.
    /// They keep their place in the queue and their numbers: the counters do not change.
    pub fn replay(&self) -> Vec<Arc<Element>> {
        self.queued().filter_map(restore).collect()
    }

    /// Stanzas sent in total (mod 2^32), for `<handled-count-too-high send-count/>`.
    pub fn send_count(&self) -> u32 {
        self.sent
    }

    /// The unacknowledged stanzas, oldest first (rebuilt from their serialization).
    pub fn unacked(&self) -> impl Iterator<Item = Arc<Element>> + '_ {
        self.queued().filter_map(restore)
    }
}

/// `<a h='…'/>`
pub fn ack(h: u32) -> Element {
    Element::new("a", NS).with_attr("h", h.to_string())
}

/// `<r/>`
pub fn request() -> Element {
    Element::new("r", NS)
}

/// `<enabled/>` (XEP-0198 §3), with the resumption id and `max` (seconds) when resumable.
pub fn enabled(resume: Option<(&str, u64)>) -> Element {
    let mut e = Element::new("enabled", NS);
    if let Some((id, max)) = resume {
        e = e
            .with_attr("id", id)
            .with_attr("resume", "true")
            .with_attr("max", max.to_string());
    }
    e
}

/// `<resumed previd h/>` (XEP-0198 §5).
pub fn resumed(previd: &str, h: u32) -> Element {
    Element::new("resumed", NS)
        .with_attr("previd", previd)
        .with_attr("h", h.to_string())
}

/// `<failed>` with a stanza error condition (XEP-0198 §3, §5), and `h` when known.
pub fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut e = Element::new("failed", NS).with_child(Element::new(
        condition,
        "urn:ietf:params:xml:ns:xmpp-stanzas",
    ));
    if let Some(h) = h {
        e = e.with_attr("h", h.to_string());
    }
    e
}

/// `<handled-count-too-high h send-count/>`, the application condition of the
/// `undefined-condition` stream error (XEP-0198 §4).
pub fn handled_count_too_high(h: u32, send_count: u32) -> Element {
    Element::new("handled-count-too-high", NS)
        .with_attr("h", h.to_string())
        .with_attr("send-count", send_count.to_string())
}

/// Whether `<enable/>` or `<resume/>`-style `resume` attribute asks for resumption
/// (`true` or `1`, XML Schema boolean).
pub fn wants_resume(el: &Element) -> bool {
    matches!(el.attr("resume"), Some("true" | "1"))
}

/// Parses an `h` attribute.
pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> Arc<Element> {
        Arc::new(Element::new("message", "jabber:client").with_attr("id", i.to_string()))
    }

    #[test]
    fn acks_drop_what_they_cover() {
        let mut s = SmState::new();
        for i in 0..5 {
            s.sent(msg(i));
        }
        assert_eq!(s.acknowledge(2), Ok(()));
        assert_eq!(s.pending(), 3);
        assert_eq!(
            s.unacked()
                .next()
                .and_then(|e| e.attr("id").map(str::to_string))
                .as_deref(),
            Some("2")
        );
        // The same h again changes nothing.
        assert_eq!(s.acknowledge(2), Ok(()));
        assert_eq!(s.pending(), 3);
        assert_eq!(
            s.acknowledge(9),
            Err(SmError::HandledCountTooHigh {
                h: 9,
                send_count: 5
            })
        );
        assert_eq!(s.take_unacked().len(), 3);
    }

    #[test]
    fn counters_wrap_around() {
        // XEP-0198 §4: h wraps at 2^32.
        let mut s = SmState {
            inbound: u32::MAX,
            sent: u32::MAX - 1,
            acked: u32::MAX - 1,
            ..SmState::default()
        };
        s.received();
        assert_eq!(s.handled(), 0);
        s.sent(msg(1));
        s.sent(msg(2));
        s.sent(msg(3));
        assert_eq!(s.pending(), 3);
        // Acknowledge across the wrap: MAX-1 + 2 = 0.
        assert_eq!(s.acknowledge(0), Ok(()));
        assert_eq!(s.pending(), 1);
        assert_eq!(s.acknowledge(1), Ok(()));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn elements() {
        assert_eq!(ack(7).to_string(), "<a xmlns='urn:xmpp:sm:3' h='7'/>");
        assert_eq!(parse_h(&ack(42)), Some(42));
        assert_eq!(parse_h(&Element::new("a", NS).with_attr("h", "-1")), None);
        assert_eq!(
            enabled(None).to_string(),
            "<enabled xmlns='urn:xmpp:sm:3'/>"
        );
        assert_eq!(
            enabled(Some(("x", 300))).to_string(),
            "<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true' max='300'/>"
        );
        assert_eq!(
            resumed("x", 3).to_string(),
            "<resumed xmlns='urn:xmpp:sm:3' previd='x' h='3'/>"
        );
        assert!(
            failed("item-not-found", None)
                .has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        );
        assert!(wants_resume(
            &Element::new("enable", NS).with_attr("resume", "1")
        ));
        assert!(!wants_resume(&Element::new("enable", NS)));
    }

    #[test]
    fn queued_stanzas_come_back_as_they_were_and_are_not_retained() {
        let stanza = Arc::new(
            Element::new("message", "jabber:client")
                .with_attr("to", "a@b/c")
                .with_attr("type", "chat")
                .with_attr("xml:lang", "en")
                .with_child(Element::new("body", "jabber:client").with_text("x < y & \"z\"\r\n"))
                .with_child(
                    Element::new("delay", "urn:xmpp:delay")
                        .with_attr("stamp", "2026-01-01T00:00:00Z"),
                ),
        );
        let presence = Arc::new(Element::new("presence", "jabber:client").with_child(
            Element::new("c", "http://jabber.org/protocol/caps").with_attr("ver", "v"),
        ));
        let mut s = SmState::new();
        s.sent(stanza.clone());
        s.sent(presence.clone());
        // The queue does not keep the trees alive.
        assert_eq!(Arc::strong_count(&stanza), 1);
        let again = s.replay();
        assert_eq!(again.len(), 2);
        assert_eq!(*again[0], *stanza);
        assert_eq!(*again[1], *presence);
        assert_eq!(s.unacked().count(), 2);
        assert_eq!(s.acknowledge(1), Ok(()));
        let left = s.take_unacked();
        assert_eq!(left.len(), 1);
        assert_eq!(*left[0], *presence);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn partial_acks_keep_the_rest_in_order() {
        let ids = |s: &SmState| -> Vec<String> {
            s.unacked()
                .filter_map(|e| e.attr("id").map(str::to_string))
                .collect()
        };
        let mut s = SmState::new();
        let mut next = 0;
        let mut acked = 0;
        // Acks of one, some and all of what is pending, interleaved with sends, so that the
        // buffer is compacted, emptied and reused.
        for round in 0..50u32 {
            for _ in 0..(round % 7 + 1) {
                s.sent(msg(next));
                next += 1;
            }
            acked += (round % 3).min(next - acked);
            if round % 5 == 0 {
                acked = next;
            }
            assert_eq!(s.acknowledge(acked), Ok(()));
            let want: Vec<String> = (acked..next).map(|i| i.to_string()).collect();
            assert_eq!(ids(&s), want);
            assert_eq!(s.pending(), want.len());
        }
        assert_eq!(s.take_unacked().len(), (next - acked) as usize);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.unacked().count(), 0);
    }

    #[test]
    fn serialized_stanzas_queue_like_elements() {
        let mut a = SmState::new();
        let mut b = SmState::new();
        for i in 0..3 {
            a.sent(msg(i));
            let mut out = Vec::new();
            msg(i).write_to(&mut out, "jabber:client");
            b.sent_serialized(&out);
        }
        assert_eq!(a.replay(), b.replay());
        assert_eq!(a.send_count(), b.send_count());
        assert_eq!(b.acknowledge(2), Ok(()));
        assert_eq!(b.take_unacked(), vec![msg(2)]);
    }

    #[test]
    fn replay_keeps_the_queue_and_the_counters() {
        let mut s = SmState::new();
        for i in 0..3 {
            s.sent(msg(i));
        }
        assert_eq!(s.acknowledge(1), Ok(()));
        assert_eq!(s.replay().len(), 2);
        assert_eq!(s.pending(), 2);
        assert_eq!(s.send_count(), 3);
        assert_eq!(s.acknowledge(3), Ok(()));
        assert_eq!(s.pending(), 0);
    }
}

//! XEP-0198 Stream Management: the connection's counters and unacknowledged queue on the
//! outbound path (written in [`super::engine`]'s flush), `<enable/>`, `<r/>`/`<a/>`, and
//! resumption of a hibernating session.

use std::time::Duration;

use canto_core::sm::{Hibernated, ResumeLookup};
use canto_proto::sm::{self as smp, SmError, SmState};
use canto_stanza::{StreamCondition, StreamError, ns};
use canto_xml::Element;
use tokio::time::Instant;
use tracing::info;

use super::engine::{Conn, End, Phase, stream_error};
use super::transport::Transport;

/// A connection's XEP-0198 state.
pub(super) struct SmConn {
    pub(super) state: SmState,
    /// The resumption id, when the client asked for resumption.
    pub(super) resume_id: Option<String>,
    /// An `<r/>` is out and its `<a/>` has not come back yet.
    pub(super) ack_requested: bool,
    /// `[stream_management] max_unacked` when enabled.
    pub(super) max_unacked: usize,
    /// `[stream_management] request_ack_after` when enabled.
    pub(super) request_after: usize,
    /// The client asked for an ack (`<r/>`) and our `<a/>` is not written yet: it goes out
    /// with the next write, and on its own by this time at the latest.
    pub(super) answer_by: Option<Instant>,
    /// `[stream_management] answer_delay_ms`.
    pub(super) answer_delay: Duration,
}

impl SmConn {
    pub(super) fn new(
        state: SmState,
        resume_id: Option<String>,
        config: &canto_core::Config,
    ) -> SmConn {
        SmConn {
            state,
            resume_id,
            ack_requested: false,
            // A full offline store delivered at login (XEP-0160) comes on top: it is written
            // before the client can acknowledge anything, and must not lock the account out.
            max_unacked: config.stream_management.max_unacked + config.offline.max_messages,
            request_after: config.stream_management.request_ack_after,
            answer_by: None,
            answer_delay: Duration::from_millis(config.stream_management.answer_delay_ms),
        }
    }
}

/// XEP-0198 §4: `<a h/>` with what we handled so far; a nonza, not counted, written as bytes.
pub(super) fn write_answer(out: &mut Vec<u8>, sm: &mut SmConn) {
    sm.answer_by = None;
    let h = sm.state.handled();
    out.extend_from_slice(format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>").as_bytes());
}

/// XEP-0198 §4: an ack for more than was sent.
fn handled_count_too_high(h: u32, send_count: u32) -> End {
    End::Error(
        StreamError::new(StreamCondition::UndefinedCondition)
            .with_text("you acknowledged more stanzas than were sent")
            .with_app(smp::handled_count_too_high(h, send_count)),
    )
}

/// How long a resumption waits for the old connection to hand its session over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl<T: Transport> Conn<T> {
    /// XEP-0198 elements after authentication. Which ones each phase accepts is decided here.
    pub(super) async fn stream_management(&mut self, el: Element) -> Result<(), End> {
        let bound = matches!(self.phase, Phase::Bound { .. });
        match el.name() {
            "enable" => {
                // XEP-0198 §3: only after binding, and once.
                let Phase::Bound { handle, .. } = &self.phase else {
                    self.send(&smp::failed("unexpected-request", None));
                    return Ok(());
                };
                if self.sm.is_some() {
                    self.send(&smp::failed("unexpected-request", None));
                    return Ok(());
                }
                // `resume_timeout = 0`: resumption is not offered (XEP-0198 §3 lets the
                // server decline it; the session is then enabled without an id).
                let max = self.ctx.server.resume_timeout().as_secs();
                let resume_id = (smp::wants_resume(&el) && max > 0).then(|| {
                    self.ctx
                        .server
                        .sm
                        .register(handle.jid().to_bare(), self.closer.clone())
                });
                self.send(&smp::enabled(resume_id.as_deref().map(|id| (id, max))));
                let config = self.ctx.server.config();
                self.sm = Some(SmConn::new(SmState::new(), resume_id, &config));
                Ok(())
            }
            "r" if bound => {
                // XEP-0198 §4: answer with what we handled — with the next stanzas written, or
                // after `answer_delay_ms` at the latest: an answer of its own costs a write (a
                // packet, a wakeup on both sides) per <r/>. The h then counts what we handled
                // by the time it is written, which the client's <r/> asked for too.
                let Some(sm) = &mut self.sm else {
                    return Err(stream_error(StreamCondition::UnsupportedStanzaType));
                };
                if sm.answer_delay.is_zero() {
                    write_answer(&mut self.out, sm);
                } else if sm.answer_by.is_none() {
                    sm.answer_by = Some(Instant::now() + sm.answer_delay);
                }
                Ok(())
            }
            "a" if bound => {
                let Some(sm) = &mut self.sm else {
                    return Err(stream_error(StreamCondition::UnsupportedStanzaType));
                };
                // An <a/> without a usable h acknowledges nothing (Prosody ignores it too).
                let Some(h) = smp::parse_h(&el) else {
                    return Ok(());
                };
                sm.ack_requested = false;
                match sm.state.acknowledge(h) {
                    Ok(()) => Ok(()),
                    Err(SmError::HandledCountTooHigh { h, send_count }) => {
                        Err(handled_count_too_high(h, send_count))
                    }
                }
            }
            "resume" if !bound => self.resume(&el).await,
            "resume" => {
                self.send(&smp::failed("unexpected-request", None));
                Ok(())
            }
            _ => Err(stream_error(StreamCondition::UnsupportedStanzaType)),
        }
    }

    /// XEP-0198 §5: `<resume previd h/>` instead of binding.
    pub(super) async fn resume(&mut self, el: &Element) -> Result<(), End> {
        let Phase::Authenticated { username } = &self.phase else {
            return Err(stream_error(StreamCondition::InternalServerError));
        };
        let host = self.host.clone().unwrap_or_default();
        let bare = canto_stanza::BareJid::new(&format!("{username}@{host}"));
        let (Ok(bare), Some(previd), Some(h)) = (bare, el.attr("previd"), smp::parse_h(el)) else {
            self.send(&smp::failed("item-not-found", None));
            return Ok(());
        };
        let previd = previd.to_string();
        let server = self.ctx.server.clone();
        // If the old connection is still there it is told to close; wait for it to hand over.
        let give_up = Instant::now() + TAKEOVER_WAIT;
        let state = loop {
            match server.sm.begin_resume(&previd, &bare) {
                ResumeLookup::Ready(s) => break s,
                ResumeLookup::Wait if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // XEP-0198 §5: unknown or expired; `h` tells the client which of its stanzas
                // the ended session handled.
                ResumeLookup::NotFound { h } => {
                    self.send(&smp::failed("item-not-found", h));
                    return Ok(());
                }
                ResumeLookup::Wait => {
                    self.send(&smp::failed("item-not-found", None));
                    return Ok(());
                }
            }
        };
        let Hibernated {
            handle,
            rx,
            sm,
            closer,
        } = *state;
        // A bind of the same full JID may have replaced the hibernating session meanwhile:
        // then it is over.
        if server.sessions.get(handle.jid()).map(|s| s.id()) != Some(handle.id()) {
            let h = sm.handled();
            server.sm_ended(&previd, &handle, &sm);
            server.destroy_session(&handle, "replaced while hibernating");
            server.reroute_unacked(&handle, sm, rx).await;
            self.send(&smp::failed("item-not-found", Some(h)));
            return Ok(());
        }
        // The session's closer goes on serving this connection; a close the old connection
        // was asked for is not this one's.
        closer.clear();
        self.closer = closer;
        server.sm.revive(&previd, bare, self.closer.clone());
        tracing::Span::current().record("jid", tracing::field::display(handle.jid()));
        self.phase = Phase::Bound { handle, rx };
        let mut sm = SmConn::new(sm, Some(previd.clone()), &server.config());
        let acked = sm.state.acknowledge(h);
        let handled = sm.state.handled();
        let replay = sm.state.replay();
        self.sm = Some(sm);
        if let Err(SmError::HandledCountTooHigh { h, send_count }) = acked {
            return Err(handled_count_too_high(h, send_count));
        }
        info!(replayed = replay.len(), "session resumed");
        self.send(&smp::resumed(&previd, handled));
        // What the client did not acknowledge, again, in order, keeping its numbers; what was
        // queued meanwhile follows through the session's queue.
        for el in replay {
            el.write_to(&mut self.out, ns::CLIENT);
        }
        Ok(())
    }
}

//! The seam between the session engine ([`super::engine`]) and a transport. The engine decides
//! everything XMPP (negotiation, SASL, binding, XEP-0198, XEP-0352, routing, teardown); a
//! transport owns bytes, the XML parser and the framing:
//!
//! * in: it turns what the client sent into [`StreamEvent`]s — a stream open with its
//!   attributes (`<stream:stream>` on TCP, `<open/>` on WebSocket, RFC 7395 §3.4), a top-level
//!   element, a stream close;
//! * out: the engine serializes complete top-level elements into one buffer and asks the
//!   transport to write it, to write a stream open or close in its own framing, to start TLS
//!   (a capability only some transports have) and for the channel-binding data it then has.
//!
//! The engine is generic over the transport (no dynamic dispatch on the hot path).

use std::future::Future;

use canto_proto::sasl::ChannelBindings;
use canto_stanza::StreamError;
use canto_xml::{Limits, StreamEvent};
use tokio::time::Instant;

/// Why reading from the client ended.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection or it failed (the reason, for the log).
    Gone(&'static str),
    /// What the client sent is not acceptable XML (RFC 6120 §4.9.3: the stream error).
    Stream(StreamError),
}

/// A client transport, driven by the session engine. Each connection has its own.
pub trait Transport: Send {
    /// The transport's name for the connection gauge of `/metrics` (`canto_connections{kind}`):
    /// `tcp`, `websocket`, `bosh`.
    fn kind(&self) -> &'static str {
        "other"
    }

    /// Waits for input and appends the stream events it carries to `events`: at most `max`
    /// bytes' worth (`max` > 0; the read rate limit), or one message on a message-framed
    /// transport. `Ok(n)`: the number of bytes consumed (rate accounting). Must be cancel-safe:
    /// the engine waits for it alongside the session's queue and timers.
    fn read(
        &mut self,
        max: usize,
        events: &mut Vec<StreamEvent>,
    ) -> impl Future<Output = Result<usize, ReadError>> + Send;

    /// The client has closed its stream (after the events of the last read).
    fn input_closed(&self) -> bool;

    /// A new stream follows on this connection (RFC 6120 §4.3.3: after STARTTLS and after SASL
    /// success); `limits`: new parser limits for it (authenticated stanzas may be larger).
    fn restart(&mut self, limits: Option<Limits>);

    /// Writes what the engine serialized (complete top-level elements) and flushes it.
    fn write(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Closes the write side after the last write (a TLS close_notify, a TCP FIN).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;

    /// Appends the server's stream open (RFC 6120 §4.7) in this transport's framing.
    fn write_open(&self, out: &mut Vec<u8>, host: &str, stream_id: &str);

    /// Appends the server's stream close in this transport's framing.
    fn write_close(&self, out: &mut Vec<u8>);

    /// The connection is encrypted (TLS, or a transport that is secure by construction).
    fn is_secure(&self) -> bool;

    /// STARTTLS (RFC 6120 §5) can be offered now.
    fn can_starttls(&self) -> bool;

    /// Performs the TLS handshake (after `<proceed/>`, or at once for direct TLS, XEP-0368) by
    /// `deadline`; returns the channel-binding data of the new TLS connection (RFC 9266,
    /// RFC 5929). `Err`: the connection is lost (the reason, for the log).
    fn start_tls(
        &mut self,
        deadline: Instant,
    ) -> impl Future<Output = Result<ChannelBindings, &'static str>> + Send;
}

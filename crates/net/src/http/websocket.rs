//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`. The upgrade is checked here (the
//! `xmpp` subprotocol, §3.1); the session is the one c2s engine over [`WsTransport`], so SASL,
//! binding, XEP-0198 (resumption from a new WebSocket), XEP-0352, limits and teardown are
//! exactly those of TCP. Only the framing differs: `<open/>` and `<close/>` in the framing
//! namespace instead of `<stream:stream>` (§3.3.2, §3.6), and one complete element per message
//! in each direction (§3.3.3).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canto_proto::sasl::ChannelBindings;
use canto_stanza::{StreamCondition, StreamError, ns};
use canto_xml::{Element, Limits, StreamEvent, StreamParser, escape};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::{ConnInfo, HttpContext};
use crate::c2s::transport::{ReadError, Transport};
use crate::c2s::{self, unauth_limits};

/// A WebSocket message (axum's, re-exported for [`serve_ws_memory`]'s callers).
pub use axum::extract::ws::Message as WsMessage;

/// RFC 7395 §3.3.1: the framing namespace of `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// The root every message is parsed under: each message is a document of its own, but the
/// parser reads a stream, so it is given one stream header that declares what a TCP stream
/// header would (a stanza without `xmlns` is then `jabber:client`, as Prosody accepts).
const PRIMER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// `GET /xmpp-websocket`.
pub(super) async fn handle(
    State(ctx): State<Arc<HttpContext>>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                "This is an XMPP WebSocket endpoint (RFC 7395): connect with a WebSocket client\n",
            )
                .into_response();
        }
    };
    // RFC 7395 §3.1: the client offers the `xmpp` subprotocol; without it this is not an XMPP
    // connection, and saying so beats an upgrade the client must then abandon.
    let offers_xmpp = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "xmpp");
    if !offers_xmpp {
        return (
            StatusCode::BAD_REQUEST,
            "The WebSocket subprotocol `xmpp` is required (RFC 7395 §3.1)\n",
        )
            .into_response();
    }
    let config = ctx.c2s.server.config();
    // Behind a trusted proxy the connection was not counted by address; the real client is.
    let slot = if info.client.ip() != info.peer.ip() {
        let max = if config.limits.connection_limit_exempt(info.client.ip()) {
            0
        } else {
            config.limits.max_connections_per_ip
        };
        match ctx.c2s.connections.acquire(info.client.ip(), max) {
            Some(s) => s,
            None => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from your address\n",
                )
                    .into_response();
            }
        }
    } else {
        None
    };
    let max_message = config.http.websocket_max_message;
    let redirect = (!config.http.websocket_redirect.is_empty())
        .then(|| config.http.websocket_redirect.clone());
    drop(config);
    ws.protocols(["xmpp"])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        // Small buffers: an idle session should cost little (they grow for large messages).
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            // The HTTP connection's per-address slot and shutdown token now belong to the
            // session (the HTTP exchange that opened it is over).
            let held = info.hold.lock().ok().and_then(|mut h| h.take());
            let secure = info.secure;
            let transport = WsTransport::new(&ctx.c2s, socket, secure, info.cb.clone(), redirect);
            // A secure WebSocket starts encrypted, like a direct TLS connection: the engine
            // takes the channel-binding data at once (`start_tls` does no handshake here).
            c2s::serve_transport(ctx.c2s.clone(), transport, info.client, secure).await;
            drop(slot);
            drop(held);
        })
}

/// What a [`WsTransport`] runs over: axum's [`WebSocket`], or an in-memory pair of queues
/// (fuzzing, [`serve_ws_memory`]).
pub trait WsSocket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}
impl<S> WsSocket for S where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

/// The engine's transport over one WebSocket.
pub struct WsTransport<S: WsSocket = WebSocket> {
    ws: S,
    parser: StreamParser,
    /// The client sent `<close/>`.
    closed: bool,
    secure: bool,
    cb: ChannelBindings,
    /// `http.websocket_redirect`: the client's `<open/>` is answered with a `<close/>` naming it.
    redirect: Option<String>,
}

fn primed(limits: Limits) -> StreamParser {
    let mut p = StreamParser::new(limits);
    let mut header = Vec::new();
    // The primer is ours and well-formed: it yields the header event, nothing else.
    let _ = p.feed(PRIMER, &mut header);
    p
}

impl<S: WsSocket> WsTransport<S> {
    /// A transport over an upgraded WebSocket; `secure`: HTTPS (or a trusted proxy's).
    pub fn new(
        ctx: &crate::c2s::C2sContext,
        ws: S,
        secure: bool,
        cb: ChannelBindings,
        redirect: Option<String>,
    ) -> WsTransport<S> {
        WsTransport {
            ws,
            parser: primed(unauth_limits(&ctx.server.config())),
            closed: false,
            secure,
            cb,
            redirect,
        }
    }

    /// One text message from the client: one element (RFC 7395 §3.3.3).
    fn message(&mut self, data: &[u8], events: &mut Vec<StreamEvent>) -> Result<(), ReadError> {
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(());
        }
        let mut got = Vec::new();
        self.parser
            .feed(data, &mut got)
            .map_err(|e| ReadError::Stream(e.into()))?;
        if self.parser.mid_element() {
            return Err(ReadError::Stream(
                StreamError::new(StreamCondition::NotWellFormed).with_text(
                    "a WebSocket message must hold complete XML elements (RFC 7395 §3.3.3)",
                ),
            ));
        }
        for ev in got {
            match ev {
                StreamEvent::Stanza(el) if el.ns() == NS_FRAMING => match el.name() {
                    "open" => events.push(StreamEvent::Header(open_to_header(&el))),
                    "close" => {
                        self.closed = true;
                        events.push(StreamEvent::Close);
                    }
                    _ => {
                        return Err(ReadError::Stream(
                            StreamError::new(StreamCondition::UnsupportedStanzaType)
                                .with_text("unknown framing element"),
                        ));
                    }
                },
                // The primer's root closing cannot come from a message (its end tag would not
                // match an open element of the message); anything else is an element.
                other => events.push(other),
            }
        }
        Ok(())
    }

    /// Sends the client elsewhere (RFC 7395 §3.6.2) and closes.
    async fn send_redirect(&mut self, uri: &str) {
        let close = format!(
            "<close xmlns='{NS_FRAMING}' see-other-uri='{}'/>",
            escape(uri)
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.ws.send(Message::Text(close.into())).await?;
            self.ws
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: "see-other-uri".into(),
                })))
                .await
        })
        .await;
    }
}

/// RFC 7395 §3.3.2: `<open/>` carries the stream header's attributes; the engine checks them
/// as it checks a TCP header (`to`, `version`, `xml:lang`).
fn open_to_header(open: &Element) -> Element {
    let mut h = Element::new("stream", ns::STREAMS).with_attr("xmlns", ns::CLIENT);
    for (k, v) in open.attrs() {
        if matches!(k, "to" | "from" | "version" | "xml:lang" | "id") {
            h.set_attr(k, v);
        }
    }
    h
}

impl<S: WsSocket> Transport for WsTransport<S> {
    fn kind(&self) -> &'static str {
        "websocket"
    }

    async fn read(
        &mut self,
        _max: usize,
        events: &mut Vec<StreamEvent>,
    ) -> Result<usize, ReadError> {
        // Cancel-safe: the WebSocket keeps a partly received frame in its own buffer.
        let msg = match self.ws.next().await {
            None => return Err(ReadError::Gone("websocket closed")),
            Some(Err(e)) => {
                debug!(error = %e, "websocket read failed");
                return Err(match e.into_inner().downcast_ref::<tungstenite::Error>() {
                    Some(tungstenite::Error::Capacity(_)) => ReadError::Stream(
                        StreamError::new(StreamCondition::PolicyViolation)
                            .with_text("message too large"),
                    ),
                    _ => ReadError::Gone("websocket error"),
                });
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => {
                let n = t.len();
                self.message(t.as_bytes(), events)?;
                if let Some(uri) = self.redirect.clone()
                    && events.iter().any(|e| matches!(e, StreamEvent::Header(_)))
                {
                    self.send_redirect(&uri).await;
                    return Err(ReadError::Gone("redirected (see-other-uri)"));
                }
                Ok(n.max(1))
            }
            // RFC 7395 §3.2: XMPP messages are text; a binary one is not XMPP.
            Message::Binary(_) => Err(ReadError::Stream(
                StreamError::new(StreamCondition::UnsupportedEncoding)
                    .with_text("XMPP over WebSocket uses text messages (RFC 7395 §3.2)"),
            )),
            // A ping is answered by the WebSocket layer; a ping or pong proves the client alive
            // (the engine's idle timer), and counts one byte against the read rate.
            Message::Ping(_) | Message::Pong(_) => Ok(1),
            // A close frame without <close/> first: the connection is going (§3.6.1 asks the
            // client for <close/>; we end the session as for a lost TCP connection).
            Message::Close(_) => Err(ReadError::Gone("websocket closed without <close/>")),
        }
    }

    fn input_closed(&self) -> bool {
        self.closed
    }

    fn restart(&mut self, limits: Option<Limits>) {
        let limits = limits.unwrap_or_else(|| self.parser.limits());
        self.parser = primed(limits);
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut messages = Vec::new();
        let whole = super::framing::for_each_element(data, |el| messages.push(el));
        for m in messages {
            // Our serializer writes UTF-8 only.
            let text = String::from_utf8(m).map_err(std::io::Error::other)?;
            self.ws
                .feed(Message::Text(text.into()))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.ws.flush().await.map_err(std::io::Error::other)?;
        if !whole {
            return Err(std::io::Error::other("output was not complete elements"));
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self
                .ws
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: "".into(),
                })))
                .await;
            // Wait briefly for the client's close frame, so the TCP close is orderly.
            while let Some(Ok(m)) = self.ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    fn write_open(&self, out: &mut Vec<u8>, host: &str, stream_id: &str) {
        // RFC 7395 §3.3.2: the server's <open/> (no `to`; `from`, `id`, `version`).
        out.extend_from_slice(
            format!(
                "<open xmlns='{NS_FRAMING}' from='{}' id='{}' version='1.0' xml:lang='en'/>",
                escape(host),
                escape(stream_id)
            )
            .as_bytes(),
        );
    }

    fn write_close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("<close xmlns='{NS_FRAMING}'/>").as_bytes());
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn can_starttls(&self) -> bool {
        // RFC 7395 §3.7: TLS is the WebSocket's (wss), never STARTTLS.
        false
    }

    async fn start_tls(&mut self, _deadline: Instant) -> Result<ChannelBindings, &'static str> {
        if self.secure {
            Ok(self.cb.clone())
        } else {
            Err("no TLS on this WebSocket")
        }
    }
}

/// An in-memory WebSocket: messages in from a channel, messages out to another.
struct MemorySocket {
    input: mpsc::Receiver<Message>,
    output: mpsc::UnboundedSender<Message>,
}

impl Stream for MemorySocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.input.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for MemorySocket {
    type Error = axum::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
        self.output
            .send(item)
            .map_err(|_| axum::Error::new("the reader is gone"))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The whole WebSocket session (this transport and the c2s engine) over in-memory queues, as
/// if `peer` had connected with plain `ws://`: send messages into the first channel (dropping
/// it is the WebSocket going away), read what the server sent from the second. The returned
/// future is the connection task. For fuzzing and tests.
#[doc(hidden)]
pub fn serve_ws_memory(
    ctx: Arc<crate::c2s::C2sContext>,
    peer: std::net::SocketAddr,
) -> (
    mpsc::Sender<Message>,
    mpsc::UnboundedReceiver<Message>,
    impl std::future::Future<Output = ()> + Send,
) {
    let (in_tx, input) = mpsc::channel(16);
    let (output, out_rx) = mpsc::unbounded_channel();
    let t = WsTransport::new(
        &ctx,
        MemorySocket { input, output },
        false,
        ChannelBindings::default(),
        None,
    );
    (in_tx, out_rx, c2s::serve_transport(ctx, t, peer, false))
}

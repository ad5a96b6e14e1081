//! XMPP over WebSocket (RFC 7395) for the load tool, as a byte stream the workloads already
//! speak: [`WsBytes`] turns what they write (a TCP stream header, complete stanzas) into
//! WebSocket messages (`<open/>`, one element per message) and what the server sends back into
//! a TCP-like XML stream (`<open/>` becomes a stream header, `<close/>` its end), so every
//! workload runs unchanged over `--security ws`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::Result;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const STREAM_HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// A WebSocket as an XML byte stream.
pub struct WsBytes {
    ws: WebSocketStream<TcpStream>,
    /// Bytes received, translated, not read yet.
    inbound: VecDeque<u8>,
    /// Bytes written that do not make a complete element yet.
    outbound: Vec<u8>,
    /// Complete messages waiting for the sink.
    ready: VecDeque<String>,
}

/// Opens `ws://addr/xmpp-websocket` over `tcp` with the `xmpp` subprotocol.
pub async fn connect(tcp: TcpStream, host: &str, port: u16, path: &str) -> Result<WsBytes> {
    let mut req = format!("ws://{host}:{port}{path}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
    Ok(WsBytes {
        ws,
        inbound: VecDeque::new(),
        outbound: Vec::new(),
        ready: VecDeque::new(),
    })
}

/// The length of the element or stream header at the start of `data`, if complete. The
/// workloads write only well-formed XML whose attribute values hold no `>`.
fn complete(data: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        let lt = i + data.get(i..)?.iter().position(|&b| b == b'<')?;
        let gt = lt + data[lt..].iter().position(|&b| b == b'>')?;
        let tag = &data[lt..=gt];
        i = gt + 1;
        if tag.starts_with(b"<?") {
            continue;
        }
        if tag.starts_with(b"<stream:stream") {
            // A stream header: an <open/> of its own.
            return Some(i);
        }
        if tag.starts_with(b"</") {
            depth = depth.checked_sub(1)?;
        } else if !tag.ends_with(b"/>") {
            depth += 1;
        }
        if depth == 0 {
            return Some(i);
        }
    }
}

/// The `to` attribute of a stream header.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let i = tag.find(&format!(" {name}='"))? + name.len() + 3;
    Some(&tag[i..i + tag[i..].find('\'')?])
}

impl WsBytes {
    /// Moves complete elements from `outbound` to `ready` as messages.
    fn cut(&mut self) {
        loop {
            let start = self
                .outbound
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.outbound.len());
            let Some(len) = complete(&self.outbound[start..]) else {
                self.outbound.drain(..start);
                return;
            };
            let piece = String::from_utf8_lossy(&self.outbound[start..start + len]).into_owned();
            self.outbound.drain(..start + len);
            let msg = if let Some(h) = piece.find("<stream:stream") {
                let to = attr(&piece[h..], "to").unwrap_or("localhost");
                format!("<open xmlns='{FRAMING}' to='{to}' version='1.0'/>")
            } else if piece.starts_with("<message")
                || piece.starts_with("<presence")
                || piece.starts_with("<iq")
            {
                // RFC 7395 §3.3.3: each message declares its namespace.
                match piece.find([' ', '>', '/']) {
                    Some(n) if !piece[n..].starts_with(" xmlns=") => {
                        format!("{} xmlns='jabber:client'{}", &piece[..n], &piece[n..])
                    }
                    _ => piece,
                }
            } else {
                piece
            };
            self.ready.push_back(msg);
        }
    }

    fn poll_send_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.ready.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(std::io::Error::other)?;
            if let Some(m) = self.ready.pop_front() {
                Pin::new(&mut self.ws)
                    .start_send(Message::text(m))
                    .map_err(std::io::Error::other)?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        while this.inbound.is_empty() {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t.starts_with("<open") {
                        this.inbound.extend(STREAM_HEADER);
                    } else if t.starts_with("<close") {
                        this.inbound.extend(b"</stream:stream>");
                    } else {
                        this.inbound.extend(t.as_bytes());
                    }
                }
                Some(Ok(_)) => {}
            }
        }
        let n = buf.remaining().min(this.inbound.len());
        let (a, b) = this.inbound.as_slices();
        let from_a = n.min(a.len());
        buf.put_slice(&a[..from_a]);
        buf.put_slice(&b[..n - from_a]);
        this.inbound.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // Back-pressure: while earlier messages wait for the socket, take nothing more.
        ready!(this.poll_send_ready(cx))?;
        this.outbound.extend_from_slice(data);
        this.cut();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_ready(cx))?;
        Pin::new(&mut this.ws)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_ready(cx))?;
        Pin::new(&mut this.ws)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_headers_are_found_whole() {
        assert_eq!(complete(b"<a/>rest"), Some(4));
        assert_eq!(complete(b"<a><b/></a><c/>"), Some(11));
        assert_eq!(complete(b"<a><b/>"), None);
        let h = b"<?xml version='1.0'?><stream:stream to='x' version='1.0'><iq/>";
        assert_eq!(complete(h), Some(h.len() - 5));
        assert_eq!(
            attr("<stream:stream xmlns='a' to='localhost'>", "to"),
            Some("localhost")
        );
    }
}

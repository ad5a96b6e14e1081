//! One server-to-server connection's bytes: the socket (plain, TLS as either side, or an
//! in-memory pipe), the XML stream parser with the s2s budgets, the read rate limit, and
//! writing elements. Both directions of s2s (`incoming.rs`, `outgoing.rs`) use it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use canto_core::config::ReadLimit;
use canto_stanza::{StreamError, ns};
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::ReadBucket;

/// The socket under a server stream.
pub(crate) enum S2sIo {
    /// Unencrypted TCP.
    Plain(TcpStream),
    /// TLS, we the server (incoming).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, we the client (outgoing).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory pipe (the fuzzer, tests): never TLS.
    Memory(DuplexStream),
    /// Transiently empty while TCP is handed to TLS.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr, $closed:expr) => {
        match $self.get_mut() {
            S2sIo::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            S2sIo::Server($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            S2sIo::Client($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            S2sIo::Memory($s) => {
                let $s = Pin::new($s);
                $e
            }
            S2sIo::Closed => $closed,
        }
    };
}

impl AsyncRead for S2sIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_read(cx, buf), Poll::Ready(Err(closed())))
    }
}

impl AsyncWrite for S2sIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write(cx, buf), Poll::Ready(Err(closed())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_flush(cx), Poll::Ready(Ok(())))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

/// Why a server stream ended while reading.
#[derive(Debug)]
pub(crate) enum ReadFail {
    /// The peer went away or the socket failed (for the log).
    Gone(&'static str),
    /// What the peer sent breaks XML or a budget: this stream error closes it.
    Stream(StreamError),
}

/// An XML stream between servers over [`S2sIo`].
pub(crate) struct XmlConn {
    pub(crate) io: S2sIo,
    parser: StreamParser,
    limits: Limits,
    buf: Box<[u8; 8192]>,
    events: std::collections::VecDeque<StreamEvent>,
    bucket: ReadBucket,
    /// The last time anything was read or written (idle timeout).
    pub(crate) last_activity: Instant,
}

impl XmlConn {
    /// A stream over `io` with stanzas up to `max_stanza` bytes and the read rate `rate`.
    pub(crate) fn new(io: S2sIo, max_stanza: usize, rate: ReadLimit) -> XmlConn {
        let limits = Limits {
            max_stanza_bytes: max_stanza,
            ..Limits::AUTHENTICATED
        };
        XmlConn {
            io,
            parser: StreamParser::new(limits),
            limits,
            buf: Box::new([0u8; 8192]),
            events: Default::default(),
            bucket: ReadBucket::new(rate, Instant::now()),
            last_activity: Instant::now(),
        }
    }

    /// RFC 6120 §4.3.3: a new stream follows (after STARTTLS, after SASL success).
    pub(crate) fn restart(&mut self) {
        self.parser = StreamParser::new(self.limits);
        self.events.clear();
    }

    /// The next stream event. Cancel-safe: bytes read are parsed into the queue before any
    /// await point returns.
    pub(crate) async fn next(&mut self) -> Result<StreamEvent, ReadFail> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if self.parser.is_closed() {
                return Err(ReadFail::Gone("stream closed"));
            }
            let mut allowed = self.bucket.allowance(Instant::now());
            if allowed == 0 {
                tokio::time::sleep_until(self.bucket.ready_at()).await;
                allowed = self.bucket.allowance(Instant::now()).max(1);
            }
            let max = allowed.min(self.buf.len());
            let n = match self.io.read(&mut self.buf[..max]).await {
                Ok(0) => return Err(ReadFail::Gone("connection closed by peer")),
                Ok(n) => n,
                Err(_) => return Err(ReadFail::Gone("read error")),
            };
            self.bucket.consume(n);
            self.last_activity = Instant::now();
            let mut out = Vec::new();
            self.parser
                .feed(&self.buf[..n], &mut out)
                .map_err(|e| ReadFail::Stream(e.into()))?;
            self.events.extend(out);
        }
    }

    /// Writes bytes and flushes.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await?;
        self.last_activity = Instant::now();
        Ok(())
    }

    /// Writes one element: stanzas (kept in `jabber:client` inside the server) go out in the
    /// stream's default namespace, `jabber:server`, with no declaration (RFC 6120 §4.8.3).
    pub(crate) async fn send(&mut self, el: &Element) -> io::Result<()> {
        let mut out = Vec::with_capacity(256);
        if el.ns() == canto_proto::s2s::NS_DIALBACK {
            write_dialback(el, &mut out);
        } else {
            el.write_to(&mut out, ns::CLIENT);
        }
        self.write(&out).await
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1), within a second.
    pub(crate) async fn fail(&mut self, err: StreamError) {
        let mut out = Vec::new();
        err.to_element().write_to(&mut out, ns::CLIENT);
        out.extend_from_slice(b"</stream:stream>");
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.write(&out).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Closes the stream politely (RFC 6120 §4.4).
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.write(b"</stream:stream>").await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Whether the socket is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.io, S2sIo::Server(_) | S2sIo::Client(_))
    }

    /// TLS as the server (STARTTLS on an incoming stream, or direct TLS, XEP-0368).
    pub(crate) async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<(), &'static str> {
        let S2sIo::Plain(tcp) = std::mem::replace(&mut self.io, S2sIo::Closed) else {
            return Err("TLS on a non-TCP connection");
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => {
                self.io = S2sIo::Server(Box::new(t));
                self.restart();
                Ok(())
            }
            Ok(Err(_)) => Err("TLS handshake failed"),
            Err(_) => Err("TLS handshake timed out"),
        }
    }

    /// TLS as the client (STARTTLS on an outgoing stream, or direct TLS), with SNI `name`.
    pub(crate) async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: &str,
        deadline: Instant,
    ) -> Result<(), &'static str> {
        let S2sIo::Plain(tcp) = std::mem::replace(&mut self.io, S2sIo::Closed) else {
            return Err("TLS on a non-TCP connection");
        };
        // The A-label form for SNI (RFC 6066 §3).
        let Some(server_name) = super::verify::sni_name(name) else {
            return Err("the remote domain is not a valid TLS server name");
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout_at(deadline, connector.connect(server_name, tcp)).await {
            Ok(Ok(t)) => {
                self.io = S2sIo::Client(Box::new(t));
                self.restart();
                Ok(())
            }
            Ok(Err(_)) => Err("TLS handshake failed"),
            Err(_) => Err("TLS handshake timed out"),
        }
    }

    /// The certificate chain the peer presented, end entity first (empty: none, or no TLS).
    pub(crate) fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        let certs = match &self.io {
            S2sIo::Server(t) => t.get_ref().1.peer_certificates(),
            S2sIo::Client(t) => t.get_ref().1.peer_certificates(),
            _ => None,
        };
        certs
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }
}

/// Writes a dialback element with the `db:` prefix the stream header declares (XEP-0220 §2.1:
/// `<db:result/>`, `<db:verify/>`). Namespace-wise `<result xmlns='jabber:server:dialback'/>`
/// is the same element, but ejabberd 23.01 recognises dialback only by the literal prefix
/// (tests/federation/README.md). Children (an `<error/>`, XEP-0220 §2.4) are in the stream's
/// default namespace.
fn write_dialback(el: &Element, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<db:");
    out.extend_from_slice(el.name().as_bytes());
    for (k, v) in el.attrs() {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        canto_xml::escape_attr_into(out, v);
        out.push(b'\'');
    }
    if el.nodes().is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for n in el.nodes() {
        match n {
            canto_xml::Node::Element(c) => c.write_to(out, ns::CLIENT),
            canto_xml::Node::Text(t) => canto_xml::escape_into(out, t),
        }
    }
    out.extend_from_slice(b"</db:");
    out.extend_from_slice(el.name().as_bytes());
    out.push(b'>');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_elements_carry_the_db_prefix() {
        let mut out = Vec::new();
        write_dialback(
            &canto_proto::s2s::db_result("a.example", "b'x", "k<1"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<db:result from='a.example' to='b&apos;x'>k&lt;1</db:result>"
        );
        let mut out = Vec::new();
        write_dialback(
            &canto_proto::s2s::db_error("result", "a", "b", "item-not-found", "cancel"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<db:result from='a' to='b' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
        );
        // What we write parses back into the dialback namespace under a header declaring db.
        let mut p = canto_xml::StreamParser::new(canto_xml::Limits::AUTHENTICATED);
        let mut ev = Vec::new();
        let mut doc = canto_proto::s2s::stream_header("a", "b", None);
        write_dialback(&canto_proto::s2s::db_verify("a", "b", "i", "k"), &mut doc);
        p.feed(&doc, &mut ev).unwrap_or_else(|e| panic!("{e}"));
        let parsed = ev.iter().find_map(|e| match e {
            canto_xml::StreamEvent::Stanza(el) => Some(el.clone()),
            _ => None,
        });
        assert!(parsed.is_some_and(|el| el.is("verify", canto_proto::s2s::NS_DIALBACK)));
    }
}

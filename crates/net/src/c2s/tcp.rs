//! The TCP adapter (RFC 6120 over TCP): listener connections, STARTTLS and direct TLS
//! (XEP-0368), refusing connections over the per-address cap, and [`StreamTransport`], the
//! engine's transport for an XML stream over a byte stream (TCP, TLS, or the in-memory pipe of
//! [`super::memory`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_proto::c2s::{STREAM_CLOSE, response_header};
use canto_proto::sasl::ChannelBindings;
use canto_stanza::{StreamCondition, StreamError, ns};
use canto_xml::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::transport::{ReadError, Transport};
use super::{C2sContext, engine, unauth_limits};
use crate::io::Io;
use crate::tls::CertStore;

/// Serves one accepted TCP connection; `direct_tls` for XEP-0368 listeners. `alive` is held
/// until the connection has fully ended, so shutdown can wait for every connection.
///
/// A connection beyond `limits.max_connections_per_ip` from its address is refused first:
/// on a STARTTLS listener it gets a stream header and a `<policy-violation/>` stream error
/// (RFC 6120 §4.9.3.14, §4.9.1.2: a header precedes the error); on a direct TLS listener the
/// TCP connection is closed without a TLS handshake (refusing must cost less than serving).
pub async fn serve_connection(
    ctx: Arc<C2sContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    alive: mpsc::Sender<()>,
) {
    let config = ctx.server.config();
    let max = if config.limits.connection_limit_exempt(peer.ip()) {
        0
    } else {
        config.limits.max_connections_per_ip
    };
    drop(config);
    let Some(slot) = ctx.connections.acquire(peer.ip(), max) else {
        debug!(%peer, max, "too many connections from this address; refused");
        refuse(&ctx, tcp, direct_tls).await;
        drop(alive);
        return;
    };
    let _ = tcp.set_nodelay(true);
    let transport = StreamTransport::new(&ctx, Io::Plain(tcp), !direct_tls);
    engine::serve(ctx, transport, peer, direct_tls).await;
    drop(slot);
    drop(alive);
}

/// Refuses a connection over the per-address cap (see [`serve_connection`]).
async fn refuse(ctx: &C2sContext, mut tcp: TcpStream, direct_tls: bool) {
    if direct_tls {
        return;
    }
    let host = ctx
        .server
        .config()
        .hosts
        .first()
        .cloned()
        .unwrap_or_default();
    let mut out = response_header(&host, "error");
    StreamError::new(StreamCondition::PolicyViolation)
        .with_text("too many connections from your address")
        .to_element()
        .write_to(&mut out, ns::CLIENT);
    out.extend_from_slice(STREAM_CLOSE);
    let _ = timeout(Duration::from_secs(1), async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await?;
        // Read (and discard) what the client sends until it closes, briefly: closing a socket
        // with unread data resets it, and the reset can destroy the error before it is read.
        let mut sink = [0u8; 1024];
        let mut budget = 16 * 1024;
        while budget > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => budget -= n.min(budget),
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// An XML stream over a byte stream: `<stream:stream>` framing (RFC 6120 §4), the incremental
/// parser, TLS over TCP when the listener offers it.
pub struct StreamTransport {
    io: Io,
    parser: StreamParser,
    /// The read buffer, on the heap: the transport is moved into the engine, and a buffer held
    /// inline would be copied into each async frame it passes through (the connection task's
    /// future held three of them: 10 KiB more per idle session).
    buf: Box<[u8; 4096]>,
    starttls_available: bool,
    acceptor: TlsAcceptor,
    certs: Arc<CertStore>,
}

impl StreamTransport {
    /// A transport over `io`; `starttls_available`: the listener offers STARTTLS.
    pub fn new(ctx: &C2sContext, io: Io, starttls_available: bool) -> StreamTransport {
        StreamTransport {
            io,
            parser: StreamParser::new(unauth_limits(&ctx.server.config())),
            buf: Box::new([0u8; 4096]),
            starttls_available,
            acceptor: ctx.acceptor.clone(),
            certs: ctx.certs.clone(),
        }
    }
}

impl Transport for StreamTransport {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    async fn read(
        &mut self,
        max: usize,
        events: &mut Vec<StreamEvent>,
    ) -> Result<usize, ReadError> {
        let max = max.min(self.buf.len());
        // Cancel-safe: nothing is consumed until the read has returned.
        let n = match self.io.read(&mut self.buf[..max]).await {
            Ok(0) => return Err(ReadError::Gone("connection closed by peer")),
            Ok(n) => n,
            Err(_) => return Err(ReadError::Gone("read error")),
        };
        self.parser
            .feed(&self.buf[..n], events)
            .map_err(|e| ReadError::Stream(e.into()))?;
        Ok(n)
    }

    fn input_closed(&self) -> bool {
        self.parser.is_closed()
    }

    fn restart(&mut self, limits: Option<Limits>) {
        match limits {
            Some(l) => self.parser = StreamParser::new(l),
            None => self.parser.reset(),
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    fn write_open(&self, out: &mut Vec<u8>, host: &str, stream_id: &str) {
        out.extend_from_slice(&response_header(host, stream_id));
    }

    fn write_close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(STREAM_CLOSE);
    }

    fn is_secure(&self) -> bool {
        self.io.is_tls()
    }

    fn can_starttls(&self) -> bool {
        self.starttls_available && !self.io.is_tls()
    }

    async fn start_tls(&mut self, deadline: Instant) -> Result<ChannelBindings, &'static str> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Closed) else {
            return Err("TLS on a non-TCP transport");
        };
        let tls = match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return Err("TLS handshake failed");
            }
            Err(_) => return Err("TLS handshake timed out"),
        };
        let cb = crate::tls::bindings(&self.certs, tls.get_ref().1);
        self.io = Io::Tls(Box::new(tls));
        self.starttls_available = false;
        Ok(cb)
    }
}

//! A lean XMPP client for load generation: plaintext or STARTTLS, PLAIN, SCRAM-SHA-256 or
//! SCRAM-SHA-1 (with the salted password cached per account, as real clients do), bind, then
//! raw stanzas; [`Client::split`] gives halves for reading and writing at the same time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// Transport security.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// No TLS (the server must allow SASL in plaintext).
    Plain,
    /// STARTTLS (certificates are not verified: loopback benchmarking only).
    Starttls,
    /// XMPP over WebSocket (RFC 7395), plain `ws://` to `--addr` (the server's HTTP port) at
    /// `/xmpp-websocket` (the server must allow SASL without TLS on it).
    Ws,
}

/// SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    /// SASL PLAIN.
    Plain,
    /// SCRAM-SHA-256, caching the salted password per account.
    ScramSha256,
    /// SCRAM-SHA-1, caching the salted password per account (Prosody 0.12 stores only
    /// SCRAM-SHA-1 keys).
    ScramSha1,
}

/// Salted passwords by (salt, iterations, password): what a real client caches after its
/// first login so later SCRAM logins cost it no key derivation.
pub type SaltedCache = Arc<Mutex<HashMap<(Vec<u8>, u32, String), Vec<u8>>>>;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// XMPP domain.
    pub domain: String,
    /// TLS or not.
    pub security: Security,
    /// SASL mechanism.
    pub mech: Mech,
    /// Local source addresses to spread connections over (avoids ephemeral port exhaustion).
    pub sources: Vec<std::net::IpAddr>,
    /// Salted passwords by (salt, iterations, password), shared by all clients.
    pub cache: SaltedCache,
}

/// The transport under a client: plain TCP or TLS over TCP.
enum Io {
    /// Not connected yet (only while negotiating).
    None,
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (after STARTTLS).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A WebSocket, as an XML byte stream.
    Ws(Box<crate::ws::WsBytes>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::None => Poll::Ready(Ok(())),
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::None => Poll::Ready(Ok(())),
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::None => Poll::Ready(Ok(())),
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Incoming bytes turned into stream events.
struct Incoming {
    parser: StreamParser,
    pending: std::collections::VecDeque<StreamEvent>,
    buf: Vec<u8>,
}

impl Incoming {
    fn new(buf_size: usize) -> Incoming {
        Incoming {
            parser: StreamParser::new(Limits {
                max_stanza_bytes: 1 << 24,
                ..Limits::AUTHENTICATED
            }),
            pending: Default::default(),
            buf: vec![0u8; buf_size],
        }
    }

    /// The next event, reading from `io` as needed.
    async fn next_event<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
    ) -> Result<StreamEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let n = io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("connection closed");
            }
            let mut out = Vec::new();
            self.parser
                .feed(&self.buf[..n], &mut out)
                .map_err(|e| anyhow!("bad XML from server: {e}"))?;
            self.pending.extend(out);
        }
    }
}

fn element(e: StreamEvent) -> Result<Element> {
    match e {
        StreamEvent::Stanza(e) => Ok(e),
        StreamEvent::Close => bail!("stream closed"),
        StreamEvent::Header(_) => bail!("unexpected stream header"),
    }
}

/// A connected, bound client.
pub struct Client {
    io: Io,
    /// Whether the stream is encrypted.
    pub tls: bool,
    incoming: Incoming,
    /// The bound JID.
    pub jid: String,
}

/// The receiving half of a [`Client`] after [`Client::split`].
pub struct ClientReader {
    io: Box<dyn AsyncRead + Unpin + Send>,
    incoming: Incoming,
}

/// The sending half of a [`Client`] after [`Client::split`].
pub struct ClientWriter {
    io: Box<dyn AsyncWrite + Unpin + Send>,
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

impl Client {
    /// Connects, negotiates, authenticates and binds `user`.
    pub async fn login(
        t: &Target,
        n: usize,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Result<Client> {
        let mut tcp = if t.sources.is_empty() {
            TcpStream::connect(t.addr).await?
        } else {
            let src = t.sources[n % t.sources.len()];
            let sock = if t.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(src, 0))?;
            sock.connect(t.addr).await?
        };
        tcp.set_nodelay(true)?;
        let mut c = Client {
            io: Io::None,
            tls: false,
            incoming: Incoming::new(16 * 1024),
            jid: String::new(),
        };
        if t.security == Security::Starttls {
            // Negotiate STARTTLS on the bare TCP stream, then wrap it.
            tcp.write_all(header(&t.domain).as_bytes()).await?;
            tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let mut seen = Vec::new();
            loop {
                let n = tcp.read(&mut c.incoming.buf).await?;
                if n == 0 {
                    bail!("closed during STARTTLS");
                }
                seen.extend_from_slice(&c.incoming.buf[..n]);
                if seen.windows(8).any(|w| w == b"<proceed") {
                    break;
                }
                if seen.windows(8).any(|w| w == b"<failure") {
                    bail!("STARTTLS refused");
                }
                if seen.len() > 64 * 1024 {
                    bail!("no answer to STARTTLS");
                }
            }
            let name = rustls_pki_types::ServerName::try_from(t.domain.clone())?;
            c.io = Io::Tls(Box::new(tls_connector().connect(name, tcp).await?));
            c.tls = true;
        } else if t.security == Security::Ws {
            let ws = crate::ws::connect(tcp, &t.domain, t.addr.port(), "/xmpp-websocket").await?;
            c.io = Io::Ws(Box::new(ws));
        } else {
            c.io = Io::Tcp(tcp);
        }
        c.open(&t.domain).await?;
        match t.mech {
            Mech::Plain => c.auth_plain(user, password).await?,
            Mech::ScramSha256 | Mech::ScramSha1 => c.auth_scram(t, user, password).await?,
        }
        c.incoming.parser.reset();
        c.open(&t.domain).await?;
        c.send(
            format!(
                "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
            )
            .as_bytes(),
        )
        .await?;
        let r = c.next().await?;
        c.jid = r
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("bind failed: {r}"))?;
        // Idle sessions keep a small buffer: the tool holds thousands of them.
        c.incoming.buf = vec![0u8; 4096];
        Ok(c)
    }

    /// Splits the client into halves that can be used from different tasks at once, so that
    /// reading never waits for writing. Plain TCP splits without a lock; TLS shares the
    /// stream behind tokio's split lock.
    pub fn split(self) -> (ClientReader, ClientWriter) {
        let (r, w): (
            Box<dyn AsyncRead + Unpin + Send>,
            Box<dyn AsyncWrite + Unpin + Send>,
        ) = match self.io {
            Io::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            other => {
                let (r, w) = tokio::io::split(other);
                (Box::new(r), Box::new(w))
            }
        };
        (
            ClientReader {
                io: r,
                incoming: self.incoming,
            },
            ClientWriter { io: w },
        )
    }

    async fn open(&mut self, domain: &str) -> Result<()> {
        self.send(header(domain).as_bytes()).await?;
        loop {
            match self.next_event().await? {
                StreamEvent::Header(_) => {}
                StreamEvent::Stanza(e) if e.name() == "features" => return Ok(()),
                other => bail!("unexpected {other:?}"),
            }
        }
    }

    async fn auth_plain(&mut self, user: &str, password: &str) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b64}</auth>"
            )
            .as_bytes(),
        )
        .await?;
        let r = self.next().await?;
        if r.name() != "success" {
            bail!("PLAIN failed: {r}");
        }
        Ok(())
    }

    async fn auth_scram(&mut self, t: &Target, user: &str, password: &str) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let name = match t.mech {
            Mech::ScramSha1 => "SCRAM-SHA-1",
            _ => "SCRAM-SHA-256",
        };
        let cnonce = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let first_bare = format!("n={user},r={cnonce}");
        self.send(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{name}'>{}</auth>",
                b64.encode(format!("n,,{first_bare}"))
            )
            .as_bytes(),
        )
        .await?;
        let ch = self.next().await?;
        if ch.name() != "challenge" {
            bail!("{name} refused: {ch}");
        }
        let server_first = String::from_utf8(b64.decode(ch.text())?)?;
        let (mut nonce, mut salt, mut iters) = ("", Vec::new(), 0u32);
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = v,
                Some(("s=", v)) => salt = b64.decode(v)?,
                Some(("i=", v)) => iters = v.parse()?,
                _ => {}
            }
        }
        if !nonce.starts_with(&cnonce) || iters == 0 || iters > 1_000_000 {
            bail!("odd server-first-message {server_first:?}");
        }
        let key = (salt.clone(), iters, password.to_string());
        let cached = t.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let salted = match cached {
            Some(s) => s,
            None => {
                let s = scram::salted(t.mech, password.as_bytes(), &salt, iters);
                if let Ok(mut c) = t.cache.lock() {
                    c.insert(key, s.clone());
                }
                s
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let client_key = scram::hmac(t.mech, &salted, b"Client Key")?;
        let stored = scram::hash(t.mech, &client_key);
        let sig = scram::hmac(t.mech, &stored, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let fin = format!("{without_proof},p={}", b64.encode(proof));
        self.send(
            format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                b64.encode(fin)
            )
            .as_bytes(),
        )
        .await?;
        let r = self.next().await?;
        if r.name() != "success" {
            bail!("{name} failed: {r}");
        }
        Ok(())
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next parser event.
    pub async fn next_event(&mut self) -> Result<StreamEvent> {
        self.incoming.next_event(&mut self.io).await
    }

    /// The next element.
    pub async fn next(&mut self) -> Result<Element> {
        element(self.next_event().await?)
    }
}

impl ClientReader {
    /// The next element (through the XML parser).
    pub async fn next(&mut self) -> Result<Element> {
        element(self.incoming.next_event(&mut self.io).await?)
    }

    /// Appends whatever bytes arrive next to `buf`, bypassing the XML parser (for workloads
    /// that only scan for their own payload; do not mix with [`ClientReader::next`]). Returns
    /// the number of bytes read, 0 at the end of the stream. Cancel-safe.
    pub async fn read_raw(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        Ok(self.io.read_buf(buf).await?)
    }
}

impl ClientWriter {
    /// Writes raw bytes and flushes them.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// The SCRAM primitives for the two hash functions.
mod scram {
    use super::Mech;
    use anyhow::{Result, anyhow};
    use hmac::{KeyInit, Mac};
    use sha2::Digest;

    /// `Hi(password, salt, iterations)` (RFC 5802).
    pub fn salted(mech: Mech, password: &[u8], salt: &[u8], iters: u32) -> Vec<u8> {
        match mech {
            Mech::ScramSha1 => {
                pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(password, salt, iters).to_vec()
            }
            _ => pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password, salt, iters).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(mech: Mech, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        Ok(match mech {
            Mech::ScramSha1 => {
                let mut m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key)
                    .map_err(|_| anyhow!("hmac key"))?;
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                    .map_err(|_| anyhow!("hmac key"))?;
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        })
    }

    /// `H(data)`.
    pub fn hash(mech: Mech, data: &[u8]) -> Vec<u8> {
        match mech {
            Mech::ScramSha1 => sha1::Sha1::digest(data).to_vec(),
            _ => sha2::Sha256::digest(data).to_vec(),
        }
    }
}

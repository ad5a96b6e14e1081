//! A lean XMPP client for load generation: plaintext or STARTTLS, PLAIN or SCRAM-SHA-256 (with
//! the salted password cached per account, as real clients do), bind, then raw stanzas.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use hmac::{KeyInit, Mac};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Transport security.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// No TLS (the server must allow SASL in plaintext).
    Plain,
    /// STARTTLS (certificates are not verified: loopback benchmarking only).
    Starttls,
}

/// SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    /// SASL PLAIN.
    Plain,
    /// SCRAM-SHA-256, caching the salted password per account.
    ScramSha256,
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

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A connected, bound client.
pub struct Client {
    io: Box<dyn Duplex>,
    /// Whether the stream is encrypted.
    pub tls: bool,
    parser: StreamParser,
    pending: std::collections::VecDeque<StreamEvent>,
    buf: Vec<u8>,
    /// The bound JID.
    pub jid: String,
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
        let tcp = if t.sources.is_empty() {
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
            io: Box::new(tokio::io::empty()),
            tls: false,
            parser: StreamParser::new(Limits {
                max_stanza_bytes: 1 << 24,
                ..Limits::AUTHENTICATED
            }),
            pending: Default::default(),
            buf: vec![0u8; 16 * 1024],
            jid: String::new(),
        };
        if t.security == Security::Starttls {
            // Negotiate STARTTLS on the bare TCP stream, then wrap it.
            let mut tcp = tcp;
            tcp.write_all(header(&t.domain).as_bytes()).await?;
            tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let mut seen = Vec::new();
            loop {
                let n = tcp.read(&mut c.buf).await?;
                if n == 0 {
                    bail!("closed during STARTTLS");
                }
                seen.extend_from_slice(&c.buf[..n]);
                if seen.windows(8).any(|w| w == b"<proceed") {
                    break;
                }
                if seen.windows(8).any(|w| w == b"<failure") {
                    bail!("STARTTLS refused");
                }
            }
            let name = rustls_pki_types::ServerName::try_from(t.domain.clone())?;
            c.io = Box::new(tls_connector().connect(name, tcp).await?);
            c.tls = true;
        } else {
            c.io = Box::new(tcp);
        }
        c.open(&t.domain).await?;
        match t.mech {
            Mech::Plain => c.auth_plain(user, password).await?,
            Mech::ScramSha256 => c.auth_scram(t, user, password).await?,
        }
        c.parser.reset();
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
        c.buf = vec![0u8; 4096];
        Ok(c)
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
        let cnonce = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let first_bare = format!("n={user},r={cnonce}");
        self.send(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
                b64.encode(format!("n,,{first_bare}"))
            )
            .as_bytes(),
        )
        .await?;
        let ch = self.next().await?;
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
        let key = (salt.clone(), iters, password.to_string());
        let cached = t.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let salted = match cached {
            Some(s) => s,
            None => {
                let s = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(
                    password.as_bytes(),
                    &salt,
                    iters,
                )
                .to_vec();
                if let Ok(mut c) = t.cache.lock() {
                    c.insert(key, s.clone());
                }
                s
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let hmac = |k: &[u8], d: &[u8]| -> Result<Vec<u8>> {
            let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k)
                .map_err(|_| anyhow!("hmac key"))?;
            m.update(d);
            Ok(m.finalize().into_bytes().to_vec())
        };
        let client_key = hmac(&salted, b"Client Key")?;
        let stored = sha2::Sha256::digest(&client_key);
        let sig = hmac(&stored, auth_message.as_bytes())?;
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
            bail!("SCRAM failed: {r}");
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
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let n = self.io.read(&mut self.buf).await?;
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

    /// The next element.
    pub async fn next(&mut self) -> Result<Element> {
        match self.next_event().await? {
            StreamEvent::Stanza(e) => Ok(e),
            StreamEvent::Close => bail!("stream closed"),
            StreamEvent::Header(_) => bail!("unexpected stream header"),
        }
    }
}

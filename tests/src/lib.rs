//! End-to-end test support: an in-process Canto on 127.0.0.1:0 and a raw XMPP test client that
//! speaks plaintext, STARTTLS and direct TLS, with its own SASL PLAIN and SCRAM client (written
//! from RFC 5802 independently of the server's code).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use canto::startup::{Running, Trace, start};
use canto_core::Config;
use canto_proto::sasl::{Credentials, HashAlgo};
use canto_storage::Storage;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use hmac::{KeyInit, Mac};
use rustls_pki_types::pem::PemObject;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The host every test server serves first (its generated certificate is valid for it).
pub const HOST: &str = "localhost";
/// A second virtual host.
pub const HOST2: &str = "example.test";

/// How long a test waits for any expected answer before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running in-process server with its own data directory.
pub struct TestServer {
    /// The running server.
    pub running: Running,
    /// STARTTLS port.
    pub addr: SocketAddr,
    /// Direct TLS port.
    pub tls_addr: SocketAddr,
    /// Data directory (certificates).
    pub dir: PathBuf,
    /// The storage the server uses.
    pub storage: Storage,
}

fn temp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "canto-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The default test configuration: two hosts, loopback ports, TLS required.
pub fn test_config() -> Config {
    let mut c = Config {
        data_dir: temp_dir(),
        hosts: vec![HOST.into(), HOST2.into()],
        ..Config::default()
    };
    c.c2s.listen = vec!["127.0.0.1:0".into()];
    c.c2s.direct_tls_listen = vec!["127.0.0.1:0".into()];
    c.storage.backend = "memory".into();
    c
}

impl TestServer {
    /// Starts a server with the default test configuration.
    pub async fn start() -> TestServer {
        TestServer::with_config(test_config()).await
    }

    /// Starts a server with `config` (listeners should be on 127.0.0.1:0).
    pub async fn with_config(config: Config) -> TestServer {
        let storage = Storage::memory();
        TestServer::with_storage(config, storage).await
    }

    /// Starts a server on given storage.
    pub async fn with_storage(config: Config, storage: Storage) -> TestServer {
        let dir = config.data_dir.clone();
        let running = start(config, Some(storage.clone()), &Trace::default())
            .await
            .unwrap_or_else(|e| panic!("server start: {e:#}"));
        let addr = running.starttls_addrs[0];
        let tls_addr = running.direct_tls_addrs.first().copied().unwrap_or(addr);
        TestServer {
            running,
            addr,
            tls_addr,
            dir,
            storage,
        }
    }

    /// Creates an account (4096 iterations: the minimum the server accepts for new ones).
    pub async fn add_user(&self, user: &str, password: &str) {
        self.add_user_on(HOST, user, password).await;
    }

    /// Creates an account on a given host.
    pub async fn add_user_on(&self, host: &str, user: &str, password: &str) {
        let creds = Credentials::from_password(password, 4096);
        self.storage
            .accounts
            .create(host, user, &creds)
            .await
            .unwrap_or_else(|e| panic!("create {user}: {e}"));
    }

    /// The PEM of the generated certificate for [`HOST`], to trust in TLS clients.
    pub fn cert_pem_path(&self) -> PathBuf {
        self.dir.join("certs").join(format!("{HOST}.crt"))
    }

    /// Connects a raw client over STARTTLS (not yet upgraded).
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr, self.cert_pem_path()).await
    }

    /// Logs in over STARTTLS with SCRAM-SHA-256 and binds `resource`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.connect().await;
        c.open(HOST).await;
        c.starttls()
            .await
            .unwrap_or_else(|e| panic!("starttls: {e:#}"));
        c.open(HOST).await;
        c.auth_scram(HashAlgo::Sha256, user, password, None)
            .await
            .unwrap_or_else(|e| panic!("auth {user}: {e:#}"));
        c.open(HOST).await;
        c.bind(Some(resource))
            .await
            .unwrap_or_else(|e| panic!("bind {user}: {e:#}"));
        c
    }

    /// Stops the server as SIGTERM would.
    pub async fn stop(self) {
        self.running.network.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A duplex byte stream.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A raw XMPP client for tests.
pub struct Client {
    io: Option<Box<dyn Duplex>>,
    tcp: Option<TcpStream>,
    parser: StreamParser,
    pending: std::collections::VecDeque<StreamEvent>,
    ca: PathBuf,
    /// The last `<stream:features/>` received.
    pub features: Option<Element>,
    /// The bound JID.
    pub jid: Option<String>,
    /// TLS channel-binding data (tls-exporter), after STARTTLS on TLS 1.3.
    pub exporter: Option<Vec<u8>>,
    ids: u32,
}

/// What the server closed the stream with.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// `<stream:error>` with this condition.
    Error(String),
    /// `</stream:stream>` without an error.
    Clean,
    /// The socket closed with no XMPP goodbye.
    Eof,
}

impl Client {
    /// Opens TCP to `addr`. `ca` is the certificate to trust for TLS.
    pub async fn connect(addr: SocketAddr, ca: PathBuf) -> Client {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = tcp.set_nodelay(true);
        Client {
            io: None,
            tcp: Some(tcp),
            parser: StreamParser::new(Limits {
                max_stanza_bytes: 1 << 24,
                ..Limits::AUTHENTICATED
            }),
            pending: Default::default(),
            ca,
            features: None,
            jid: None,
            exporter: None,
            ids: 0,
        }
    }

    /// Connects with direct TLS (XEP-0368).
    pub async fn connect_direct_tls(addr: SocketAddr, ca: PathBuf) -> Result<Client> {
        let mut c = Client::connect(addr, ca).await;
        c.upgrade().await?;
        Ok(c)
    }

    fn stream(&mut self) -> &mut (dyn Duplex + '_) {
        if let Some(io) = self.io.as_mut() {
            return io.as_mut();
        }
        match self.tcp.as_mut() {
            Some(t) => t,
            None => panic!("no transport"),
        }
    }

    /// A fresh id.
    pub fn id(&mut self) -> String {
        self.ids += 1;
        format!("t{}", self.ids)
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, data: &[u8]) {
        let s = self.stream();
        let _ = s.write_all(data).await;
        let _ = s.flush().await;
    }

    /// Sends raw text.
    pub async fn send(&mut self, xml: &str) {
        self.send_raw(xml.as_bytes()).await;
    }

    /// Sends a stream header for `host` and reads the answer header and features.
    pub async fn open(&mut self, host: &str) {
        self.parser.reset();
        self.pending.clear();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{host}' version='1.0'>"
        ))
        .await;
        match self.next_event().await {
            Ok(StreamEvent::Header(_)) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let f = self
            .next()
            .await
            .unwrap_or_else(|e| panic!("features: {e:#}"));
        assert!(
            f.is("features", canto_stanza::ns::STREAMS),
            "expected features, got {f}"
        );
        self.features = Some(f);
    }

    /// The next parser event.
    pub async fn next_event(&mut self) -> Result<StreamEvent> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            let n = tokio::time::timeout(WAIT, self.stream().read(&mut buf))
                .await
                .map_err(|_| anyhow!("timed out waiting for the server"))??;
            if n == 0 {
                bail!("connection closed");
            }
            let mut out = Vec::new();
            self.parser
                .feed(&buf[..n], &mut out)
                .map_err(|e| anyhow!("server sent bad XML: {e}"))?;
            self.pending.extend(out);
        }
    }

    /// The next top-level element.
    pub async fn next(&mut self) -> Result<Element> {
        match self.next_event().await? {
            StreamEvent::Stanza(e) => Ok(e),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    /// Waits until an element matching `pred` arrives, skipping others.
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Result<Element> {
        loop {
            let e = self.next().await?;
            if pred(&e) {
                return Ok(e);
            }
        }
    }

    /// Whether anything arrives within `d` (for asserting that nothing was delivered).
    pub async fn nothing_within(&mut self, d: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(d, self.stream().read(&mut buf)).await {
            Err(_) => true,
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                let mut out = Vec::new();
                let _ = self.parser.feed(&buf[..n], &mut out);
                let quiet = out.is_empty();
                self.pending.extend(out);
                quiet
            }
        }
    }

    /// Reads until the stream ends and says how.
    pub async fn closed(&mut self) -> Closed {
        let mut error = None;
        loop {
            match self.next_event().await {
                Ok(StreamEvent::Stanza(e)) if e.is("error", canto_stanza::ns::STREAMS) => {
                    error = e
                        .children()
                        .find(|c| c.ns() == canto_stanza::ns::STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_string());
                }
                Ok(StreamEvent::Close) => {
                    return match error {
                        Some(e) => Closed::Error(e),
                        None => Closed::Clean,
                    };
                }
                Ok(_) => {}
                Err(_) => {
                    return match error {
                        Some(e) => Closed::Error(e),
                        None => Closed::Eof,
                    };
                }
            }
        }
    }

    /// Sends raw bytes (a stream header included) and expects a stream error.
    pub async fn expect_stream_error(&mut self) -> String {
        match self.closed().await {
            Closed::Error(e) => e,
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    async fn upgrade(&mut self) -> Result<()> {
        let tcp = self.tcp.take().ok_or_else(|| anyhow!("already upgraded"))?;
        let pem =
            std::fs::read(&self.ca).with_context(|| format!("reading {}", self.ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c?)?;
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls_pki_types::ServerName::try_from(HOST.to_string())?;
        let tls = connector.connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        self.exporter = conn
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
            .map(|k| k.to_vec());
        self.io = Some(Box::new(tls));
        Ok(())
    }

    /// Negotiates STARTTLS (the stream must be open).
    pub async fn starttls(&mut self) -> Result<()> {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.next().await?;
        if !p.is("proceed", canto_stanza::ns::TLS) {
            bail!("expected proceed, got {p}");
        }
        self.upgrade().await
    }

    /// Mechanisms offered in the last features.
    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.get_child("mechanisms", canto_stanza::ns::SASL))
            .map(|m| m.children().map(|c| c.text()).collect())
            .unwrap_or_default()
    }

    /// SASL PLAIN; `Ok(())` on success, `Err` naming the failure condition otherwise.
    pub async fn auth_plain(&mut self, authzid: &str, user: &str, password: &str) -> Result<()> {
        let raw = format!("{authzid}\0{user}\0{password}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b64}</auth>"
        ))
        .await;
        self.sasl_outcome().await.map(|_| ())
    }

    async fn sasl_outcome(&mut self) -> Result<Element> {
        let e = self.next().await?;
        if e.is("success", canto_stanza::ns::SASL) {
            return Ok(e);
        }
        if e.is("failure", canto_stanza::ns::SASL) {
            let c = e
                .children()
                .next()
                .map(|c| c.name().to_string())
                .unwrap_or_default();
            bail!("sasl failure: {c}");
        }
        Ok(e)
    }

    /// SCRAM-SHA-1/256 (with `-PLUS` and tls-exporter when `plus` is Some). `tamper` lets a
    /// test change the client-final message before it is sent.
    pub async fn auth_scram(
        &mut self,
        algo: HashAlgo,
        user: &str,
        password: &str,
        tamper: Option<&dyn Fn(String) -> String>,
    ) -> Result<()> {
        self.auth_scram_cb(algo, user, password, false, tamper)
            .await
    }

    /// SCRAM with optional channel binding (`-PLUS`, tls-exporter).
    pub async fn auth_scram_cb(
        &mut self,
        algo: HashAlgo,
        user: &str,
        password: &str,
        plus: bool,
        tamper: Option<&dyn Fn(String) -> String>,
    ) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mech = match (algo, plus) {
            (HashAlgo::Sha1, false) => "SCRAM-SHA-1",
            (HashAlgo::Sha256, false) => "SCRAM-SHA-256",
            (HashAlgo::Sha1, true) => "SCRAM-SHA-1-PLUS",
            (HashAlgo::Sha256, true) => "SCRAM-SHA-256-PLUS",
        };
        let gs2 = if plus { "p=tls-exporter,," } else { "n,," };
        let cnonce = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let first_bare = format!("n={user},r={cnonce}");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            b64.encode(format!("{gs2}{first_bare}"))
        ))
        .await;
        let ch = self.sasl_outcome().await?;
        if !ch.is("challenge", canto_stanza::ns::SASL) {
            bail!("expected a challenge, got {ch}");
        }
        let server_first = String::from_utf8(b64.decode(ch.text())?)?;
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iters = 0u32;
        for part in server_first.split(',') {
            match part.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = b64.decode(v)?,
                ("i=", v) => iters = v.parse()?,
                _ => {}
            }
        }
        let mut cb_input = gs2.as_bytes().to_vec();
        if plus {
            cb_input.extend_from_slice(self.exporter.as_deref().unwrap_or_default());
        }
        let without_proof = format!("c={},r={nonce}", b64.encode(&cb_input));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let (proof, server_sig) =
            scram_client_proof(algo, password, &salt, iters, auth_message.as_bytes());
        let mut client_final = format!("{without_proof},p={}", b64.encode(proof));
        if let Some(t) = tamper {
            client_final = t(client_final);
        }
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64.encode(client_final)
        ))
        .await;
        let success = self.sasl_outcome().await?;
        let v = String::from_utf8(b64.decode(success.text())?)?;
        if v != format!("v={}", b64.encode(server_sig)) {
            bail!("server signature mismatch: {v}");
        }
        Ok(())
    }

    /// Binds a resource (None: server-generated); returns the JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> Result<String> {
        let id = self.id();
        let inner = match resource {
            Some(r) => format!("<resource>{}</resource>", canto_xml::escape(r)),
            None => String::new(),
        };
        self.send(&format!("<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind></iq>"))
            .await;
        let r = self.next().await?;
        if r.attr("type") != Some("result") {
            bail!("bind failed: {r}");
        }
        let jid = r
            .get_child("bind", canto_stanza::ns::BIND)
            .and_then(|b| b.get_child("jid", canto_stanza::ns::BIND))
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("no jid in {r}"))?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    /// Sends an IQ and waits for the reply with the same id.
    pub async fn iq(&mut self, xml_with_id_placeholder: &str) -> Result<Element> {
        let id = self.id();
        self.send(&xml_with_id_placeholder.replace("{id}", &id))
            .await;
        self.wait_for(|e| e.is("iq", canto_stanza::ns::CLIENT) && e.attr("id") == Some(id.as_str()))
            .await
    }
}

/// RFC 5802 §3 client side: (ClientProof, ServerSignature).
pub fn scram_client_proof(
    algo: HashAlgo,
    password: &str,
    salt: &[u8],
    iters: u32,
    auth_message: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    fn hmac_sha256(k: &[u8], d: &[u8]) -> Vec<u8> {
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k)
            .unwrap_or_else(|_| panic!("hmac"));
        m.update(d);
        m.finalize().into_bytes().to_vec()
    }
    fn hmac_sha1(k: &[u8], d: &[u8]) -> Vec<u8> {
        let mut m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(k)
            .unwrap_or_else(|_| panic!("hmac"));
        m.update(d);
        m.finalize().into_bytes().to_vec()
    }
    let (salted, h): (Vec<u8>, fn(&[u8], &[u8]) -> Vec<u8>) = match algo {
        HashAlgo::Sha256 => (
            pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password.as_bytes(), salt, iters)
                .to_vec(),
            hmac_sha256,
        ),
        HashAlgo::Sha1 => (
            pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(password.as_bytes(), salt, iters).to_vec(),
            hmac_sha1,
        ),
    };
    let client_key = h(&salted, b"Client Key");
    let stored: Vec<u8> = match algo {
        HashAlgo::Sha256 => sha2::Sha256::digest(&client_key).to_vec(),
        HashAlgo::Sha1 => sha1::Sha1::digest(&client_key).to_vec(),
    };
    let sig = h(&stored, auth_message);
    let proof = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let server_key = h(&salted, b"Server Key");
    (proof, h(&server_key, auth_message))
}

/// A stanza error's condition in a reply.
pub fn error_condition(e: &Element) -> Option<String> {
    e.get_child("error", canto_stanza::ns::CLIENT)
        .and_then(|err| {
            err.children()
                .find(|c| c.ns() == canto_stanza::ns::STANZAS && c.name() != "text")
        })
        .map(|c| c.name().to_string())
}

/// The standard client stream header for `host`.
pub fn header(host: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{host}' version='1.0'>"
    )
}

//! End-to-end test support: an in-process Canto on 127.0.0.1:0 and a raw XMPP test client that
//! speaks plaintext, STARTTLS and direct TLS, with its own SASL PLAIN and SCRAM client (written
//! from RFC 5802 independently of the server's code).

pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use canto::startup::{Running, Trace, start_with_modules};
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

/// Sends `raw` (a whole HTTP/1.1 request; add `Connection: close` to get the whole answer) to
/// `addr` over plain TCP and returns everything the server sends until it closes (or
/// [`WAIT`] passes).
pub async fn http_raw(addr: SocketAddr, raw: &str) -> String {
    let mut tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = tcp.write_all(raw.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The quiet window after a [`Client::sync`] round trip (see [`Client::quiet`]): only for
/// deliveries made outside the sender's and receiver's sessions, so it can be short.
pub const SETTLE: Duration = Duration::from_millis(100);

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
    /// Removes `dir` when the server is dropped, also when a test fails before `stop`.
    _cleanup: ScratchDir,
}

/// A directory removed on drop (also when the test fails).
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// Creates a fresh, empty `canto-TAG-PID-RANDOM` under the system's temporary directory.
    pub fn new(tag: &str) -> ScratchDir {
        let d = std::env::temp_dir().join(format!(
            "canto-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        ScratchDir(d)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process a test started; killed (by its PID) and reaped on drop if still running.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends `signal` (`"KILL"`, `"TERM"`) to this process only.
    pub fn signal(&self, signal: &str) {
        send_signal(self.0.id(), signal);
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(st)) => return st,
                Ok(None) if std::time::Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => panic!("the server did not exit within {limit:?}"),
                Err(e) => panic!("waiting for the server: {e}"),
            }
        }
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// Sends `signal` to process `pid` with kill(1), asserting that it was delivered.
pub fn send_signal(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        st.as_ref().is_ok_and(|s| s.success()),
        "kill -{signal} {pid}: {st:?}"
    );
}

/// A loopback address with a port that was free a moment ago (for a server process to bind).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
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
    c.http.listen = vec!["127.0.0.1:0".into()];
    c.http.https_listen = vec!["127.0.0.1:0".into()];
    c.s2s.listen = vec!["127.0.0.1:0".into()];
    c.storage.backend = "memory".into();
    // The read rate limit (limits.c2s, 10 kB/s by default) is off here, as in the benchmark
    // harnesses: tests that flood on purpose would otherwise take minutes. tests/tests/e2e/limits.rs
    // turns it on where it is the subject.
    c.limits.c2s.rate = "unlimited".into();
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
        TestServer::with_modules(config, storage, Vec::new()).await
    }

    /// Starts a server with `extra` modules available (enable them in `config.modules`).
    pub async fn with_modules(
        config: Config,
        storage: Storage,
        extra: Vec<std::sync::Arc<dyn canto_core::Module>>,
    ) -> TestServer {
        let dir = config.data_dir.clone();
        let running = start_with_modules(config, Some(storage.clone()), extra, &Trace::default())
            .await
            .unwrap_or_else(|e| panic!("server start: {e:#}"));
        TestServer::from_running(running, dir, storage)
    }

    fn from_running(running: Running, dir: PathBuf, storage: Storage) -> TestServer {
        let addr = running.starttls_addrs[0];
        let tls_addr = running.direct_tls_addrs.first().copied().unwrap_or(addr);
        TestServer {
            running,
            addr,
            tls_addr,
            _cleanup: ScratchDir(dir.clone()),
            dir,
            storage,
        }
    }

    /// Starts a server whose DNS answers come from `resolver` (federation tests).
    pub async fn with_resolver(
        config: Config,
        resolver: std::sync::Arc<dyn canto_net::s2s::dns::Resolver>,
    ) -> TestServer {
        let dir = config.data_dir.clone();
        let storage = Storage::memory();
        let running = canto::startup::start_with_resolver(
            config,
            Some(storage.clone()),
            Vec::new(),
            resolver,
            &Trace::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("server start: {e:#}"));
        TestServer::from_running(running, dir, storage)
    }

    /// Starts a server on given storage whose DNS answers come from `resolver` (a cluster
    /// node that federates).
    pub async fn with_resolver_and_storage(
        config: Config,
        storage: Storage,
        resolver: std::sync::Arc<dyn canto_net::s2s::dns::Resolver>,
    ) -> TestServer {
        let dir = config.data_dir.clone();
        let running = canto::startup::start_with_resolver(
            config,
            Some(storage.clone()),
            Vec::new(),
            resolver,
            &Trace::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("server start: {e:#}"));
        TestServer::from_running(running, dir, storage)
    }

    /// Logs in on `host` over STARTTLS, trusting `ca` (whose certificate names `localhost`),
    /// and binds `resource`.
    pub async fn login_with_ca(
        &self,
        ca: &Path,
        host: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        let mut c = self
            .login_unbound_trusting(ca.to_path_buf(), host, user, password)
            .await;
        c.bind(Some(resource))
            .await
            .unwrap_or_else(|e| panic!("bind {user}@{host}: {e:#}"));
        c
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
        // The data directory goes with `self` (ScratchDir).
        self.running.network.shutdown(Duration::from_secs(5)).await;
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

    /// Whether nothing at all arrives within `d` (for asserting that nothing was delivered).
    ///
    /// The whole window is waited out when nothing comes. Any byte counts as something
    /// arriving — a partial stanza, whitespace, the connection closing — and ends the wait at
    /// once with `false`; what arrived stays queued for [`Client::next`].
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
                // A parse error shows again on the next read; here it is only something that
                // arrived.
                let _ = self.parser.feed(&buf[..n], &mut out);
                self.pending.extend(out);
                false
            }
        }
    }

    /// A round trip to the server: sends a ping (XEP-0199 §4.2) to this client's domain and waits
    /// for its answer. Elements that arrive before the answer stay queued for [`Client::next`],
    /// in order. Panics if the answer does not come within [`WAIT`] or the stream ends.
    ///
    /// Why this replaces most waiting: the server handles one client's stanzas in the order they
    /// were sent, and each session has one outbound queue that carries both its replies and the
    /// stanzas routed to it. So once the answer to a ping sent after stanza X is back, X has been
    /// handled and routed; and once a *receiver's* own ping is answered, everything routed to it
    /// before then has been written to it ahead of the answer. See [`Client::quiet`].
    pub async fn sync(&mut self) {
        let id = format!("sync-{:08x}", rand::random::<u32>());
        // The domain of the bound JID (`user@domain/resource`), else the first test host.
        let to = match self.jid.as_deref() {
            Some(j) => {
                let bare = j.split('/').next().unwrap_or(j);
                bare.rsplit('@').next().unwrap_or(bare).to_string()
            }
            None => HOST.to_string(),
        };
        self.send(&format!(
            "<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let mut before = Vec::new();
        loop {
            match self.next_event().await {
                Ok(StreamEvent::Stanza(e))
                    if e.is("iq", canto_stanza::ns::CLIENT)
                        && e.attr("id") == Some(id.as_str()) =>
                {
                    break;
                }
                Ok(ev) => before.push(ev),
                Err(e) => panic!("no answer to the sync ping after {before:?}: {e:#}"),
            }
        }
        for ev in before.into_iter().rev() {
            self.pending.push_front(ev);
        }
    }

    /// Whether nothing is on its way to this client: after a [`Client::sync`] round trip (which
    /// must bring nothing but its own answer), nothing arrives within [`SETTLE`].
    ///
    /// To assert that a stanza another client `a` sent is not delivered here, call `a.sync()`
    /// first: then the stanza has been routed, and if it was routed here it is in this session's
    /// queue ahead of this client's own ping answer, so `quiet` sees it without any long window.
    /// The short window that follows only covers deliveries the server makes from another task
    /// (none is expected); what arrived stays queued for [`Client::next`].
    pub async fn quiet(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.sync().await;
        self.pending.is_empty() && self.nothing_within(SETTLE).await
    }

    /// Everything that arrives until the stream is quiet: a [`Client::sync`] round trip, then
    /// elements until none arrives within [`SETTLE`] (see [`Client::quiet`] for why that is
    /// long enough). Not for a client that CSI or XEP-0198 tests watch: the ping is a stanza.
    pub async fn drain(&mut self) -> Vec<Element> {
        self.sync().await;
        let mut v = Vec::new();
        while !self.nothing_within(SETTLE).await {
            match self.next().await {
                Ok(e) => v.push(e),
                Err(_) => break,
            }
        }
        v
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
    type Hmac = fn(&[u8], &[u8]) -> Vec<u8>;
    let (salted, h): (Vec<u8>, Hmac) = match algo {
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

// ================================================================================================
// Helpers for the bad-input and routing tests (tests/tests/e2e/bad_input.rs, routing.rs).
// Appended as one block; nothing above is changed.
// ================================================================================================

/// Everything the server sent until its stream ended, for asserting stream errors in full.
#[derive(Debug)]
pub struct StreamEnd {
    /// The server's stream header, if one arrived on this (restarted) stream. RFC 6120 §4.9.1.2:
    /// a server that has not sent one yet sends it before the stream error.
    pub header: Option<Element>,
    /// Every element before the end, the `<stream:error>` itself excluded (features included).
    pub elements: Vec<Element>,
    /// The defined condition of the `<stream:error>`, if one arrived.
    pub condition: Option<String>,
    /// The application-specific condition of the `<stream:error>`, if any (RFC 6120 §4.9.4).
    pub app: Option<Element>,
    /// How the stream ended.
    pub closed: Closed,
}

/// The read-only half a [`Client`] keeps after [`Client::take_writer`]: writes fail.
struct ReadOnly(tokio::io::ReadHalf<Box<dyn Duplex>>);

impl AsyncRead for ReadOnly {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadOnly {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The write half of a client split by [`Client::take_writer`].
pub type ClientWriter = tokio::io::WriteHalf<Box<dyn Duplex>>;

impl Client {
    /// Reads until the stream ends and reports everything that arrived (see [`StreamEnd`]).
    pub async fn stream_end(&mut self) -> StreamEnd {
        let mut end = StreamEnd {
            header: None,
            elements: Vec::new(),
            condition: None,
            app: None,
            closed: Closed::Eof,
        };
        loop {
            match self.next_event().await {
                Ok(StreamEvent::Header(h)) => end.header = Some(h),
                Ok(StreamEvent::Stanza(e)) if e.is("error", canto_stanza::ns::STREAMS) => {
                    end.condition = e
                        .children()
                        .find(|c| c.ns() == canto_stanza::ns::STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_string());
                    end.app = e
                        .children()
                        .find(|c| c.ns() != canto_stanza::ns::STREAM_ERRORS)
                        .cloned();
                }
                Ok(StreamEvent::Stanza(e)) => end.elements.push(e),
                Ok(StreamEvent::Close) => {
                    end.closed = match &end.condition {
                        Some(c) => Closed::Error(c.clone()),
                        None => Closed::Clean,
                    };
                    return end;
                }
                Err(_) => {
                    if let Some(c) = &end.condition {
                        end.closed = Closed::Error(c.clone());
                    }
                    return end;
                }
            }
        }
    }

    /// Sends `raw` (a stream header, possibly malformed) and returns the server's answering
    /// header. Features that follow stay queued.
    pub async fn send_header(&mut self, raw: &str) -> Result<Element> {
        self.parser.reset();
        self.pending.clear();
        self.send(raw).await;
        match self.next_event().await? {
            StreamEvent::Header(h) => Ok(h),
            other => bail!("expected a stream header, got {other:?}"),
        }
    }

    /// Splits off the write half, so a spawned task can keep writing while this client reads.
    /// Afterwards writes through the client itself fail silently.
    pub fn take_writer(&mut self) -> ClientWriter {
        let io: Box<dyn Duplex> = match (self.io.take(), self.tcp.take()) {
            (Some(io), _) => io,
            (None, Some(tcp)) => Box::new(tcp),
            (None, None) => panic!("no transport"),
        };
        let (r, w) = tokio::io::split(io);
        self.io = Some(Box::new(ReadOnly(r)));
        w
    }

    /// Half-closes the connection (TLS close_notify, then TCP FIN) without a stream close.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream().shutdown().await;
    }

    /// The bound JID; panics if the client has not bound.
    pub fn full_jid(&self) -> String {
        self.jid
            .clone()
            .unwrap_or_else(|| panic!("client not bound"))
    }

    /// The bound JID's bare part.
    pub fn bare_jid(&self) -> String {
        let j = self.full_jid();
        j.split('/').next().unwrap_or_default().to_string()
    }
}

impl TestServer {
    /// Logs in on `host` over STARTTLS with SCRAM-SHA-256, without binding a resource.
    pub async fn login_unbound(&self, host: &str, user: &str, password: &str) -> Client {
        self.login_unbound_trusting(self.cert_pem_path(), host, user, password)
            .await
    }

    /// [`TestServer::login_unbound`] trusting the certificate(s) in `ca`.
    async fn login_unbound_trusting(
        &self,
        ca: PathBuf,
        host: &str,
        user: &str,
        password: &str,
    ) -> Client {
        let mut c = Client::connect(self.addr, ca).await;
        c.open(host).await;
        c.starttls()
            .await
            .unwrap_or_else(|e| panic!("starttls: {e:#}"));
        c.open(host).await;
        c.auth_scram(HashAlgo::Sha256, user, password, None)
            .await
            .unwrap_or_else(|e| panic!("auth {user}@{host}: {e:#}"));
        c.open(host).await;
        c
    }

    /// Logs in on `host` and binds `resource`.
    pub async fn login_on(&self, host: &str, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.login_unbound(host, user, password).await;
        c.bind(Some(resource))
            .await
            .unwrap_or_else(|e| panic!("bind {user}@{host}: {e:#}"));
        c
    }
}

/// Asserts that `c`'s session still works: a ping to its server is answered with a result
/// (XEP-0199 §4.2).
pub async fn assert_alive(c: &mut Client) {
    let host = c
        .full_jid()
        .split(['@', '/'])
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let r = c
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{host}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("ping from {}: {e:#}", c.full_jid()));
    assert_eq!(r.attr("type"), Some("result"), "ping answer: {r}");
}

/// `contact` subscribes to `user`'s presence and `user` approves (RFC 6121 §3.1.1–§3.1.5),
/// both available; returns once `contact` has `user`'s presence.
pub async fn subscribe_to(contact: &mut Client, user: &mut Client) {
    contact
        .send(&format!(
            "<presence to='{}' type='subscribe'/>",
            user.bare_jid()
        ))
        .await;
    user.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("no subscription request: {e:#}"));
    user.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        contact.bare_jid()
    ))
    .await;
    let from = user.full_jid();
    contact
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(from.as_str()))
        .await
        .unwrap_or_else(|e| panic!("no presence after approval: {e:#}"));
}

/// Asserts that a chat message from `a` to `b`'s full JID arrives, from `a`'s full JID.
pub async fn assert_message_flows(a: &mut Client, b: &mut Client) {
    let body = format!("probe-{:016x}", rand::random::<u64>());
    a.send(&format!(
        "<message to='{}' type='chat'><body>{body}</body></message>",
        b.full_jid()
    ))
    .await;
    let m = b
        .wait_for(|e| {
            e.name() == "message"
                && e.get_child("body", canto_stanza::ns::CLIENT)
                    .is_some_and(|x| x.text() == body)
        })
        .await
        .unwrap_or_else(|e| panic!("message {} -> {}: {e:#}", a.full_jid(), b.full_jid()));
    assert_eq!(m.attr("from"), Some(a.full_jid().as_str()));
}

/// A stanza error's `type` attribute in a reply (RFC 6120 §8.3.2).
pub fn error_type(e: &Element) -> Option<String> {
    e.get_child("error", canto_stanza::ns::CLIENT)
        .and_then(|err| err.attr("type"))
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Helpers for auth.rs, sessions.rs, cli.rs and tokio_xmpp.rs (appended; nothing above changed).
// ---------------------------------------------------------------------------------------------

/// The child of a SASL `<failure/>`, e.g. `not-authorized` (`None` for anything else).
pub fn sasl_failure_condition(e: &Element) -> Option<String> {
    if !e.is("failure", canto_stanza::ns::SASL) {
        return None;
    }
    e.children()
        .find(|c| c.ns() == canto_stanza::ns::SASL && c.name() != "text")
        .map(|c| c.name().to_string())
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parses a full JID (panics on a bad one: test input).
pub fn full_jid(s: &str) -> canto_stanza::FullJid {
    canto_stanza::FullJid::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Asserts that a logged-in client still works: `a` pings the server and gets a result, then
/// sends `b` a message that `b` receives with `a`'s full JID as sender.
pub async fn assert_session_works(a: &mut Client, b: &mut Client) {
    let pong = a
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("ping: {e:#}"));
    assert_eq!(pong.attr("type"), Some("result"), "ping answer: {pong}");
    let body = format!("still alive {}", rand::random::<u32>());
    let to = b.jid.clone().unwrap_or_default();
    a.send(&format!(
        "<message to='{to}' type='chat'><body>{body}</body></message>"
    ))
    .await;
    let m = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("message to {to}: {e:#}"));
    assert_eq!(m.attr("from"), a.jid.as_deref(), "{m}");
    assert_eq!(
        m.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text()),
        Some(body)
    );
}

impl TestServer {
    /// Opens a stream over STARTTLS and leaves it ready for SASL (features read).
    pub async fn connect_tls(&self) -> Client {
        let mut c = self.connect().await;
        c.open(HOST).await;
        c.starttls()
            .await
            .unwrap_or_else(|e| panic!("starttls: {e:#}"));
        c.open(HOST).await;
        c
    }

    /// Whether a session is bound to `jid` (full JID) in the routing table.
    pub fn is_bound(&self, jid: &str) -> bool {
        self.running.server.sessions.get(&full_jid(jid)).is_some()
    }

    /// Waits until no session is bound to `jid` (full JID): a dropped client's session ends in
    /// its own task, a moment later. Panics after [`WAIT`].
    pub async fn wait_unbound(&self, jid: &str) {
        assert!(
            poll_until(WAIT, || !self.is_bound(jid)).await,
            "{jid} is still bound after {WAIT:?}"
        );
    }

    /// The id of the session bound to `jid`, if any.
    pub fn session_id(&self, jid: &str) -> Option<u64> {
        self.running
            .server
            .sessions
            .get(&full_jid(jid))
            .map(|h| h.id())
    }
}

impl Client {
    /// Sends `<auth mechanism='…'>` with `payload` as its text (already base64; `None` sends an
    /// empty element) and returns the server's answer (challenge, success or failure).
    pub async fn auth_raw(&mut self, mechanism: &str, payload: Option<&str>) -> Result<Element> {
        match payload {
            Some(p) => {
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{p}</auth>"
                ))
                .await
            }
            None => {
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'/>"
                ))
                .await
            }
        }
        self.next().await
    }

    /// Opens TCP with a small receive buffer (for slow-reader tests: the kernel then buffers
    /// little on the client side).
    pub async fn connect_small_rcvbuf(addr: SocketAddr, ca: PathBuf, bytes: u32) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
        let _ = sock.set_recv_buffer_size(bytes);
        let tcp = sock
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = tcp.set_nodelay(true);
        Client::connect_from(tcp, ca)
    }

    /// Sends a new stream header for `host` (a restart) without reading the answer, so a test
    /// can look at whatever comes back (for example a stream error).
    pub async fn restart(&mut self, host: &str) {
        self.parser.reset();
        self.pending.clear();
        self.send(&header(host)).await;
    }

    /// Performs the TLS handshake now (after a `<proceed/>` the test read itself).
    pub async fn upgrade_tls(&mut self) -> Result<()> {
        self.upgrade().await
    }

    fn connect_from(tcp: TcpStream, ca: PathBuf) -> Client {
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

    /// Logs in over an already opened TLS stream with SCRAM-SHA-256 and binds `resource`.
    pub async fn finish_login(&mut self, user: &str, password: &str, resource: &str) {
        self.auth_scram(HashAlgo::Sha256, user, password, None)
            .await
            .unwrap_or_else(|e| panic!("auth {user}: {e:#}"));
        self.open(HOST).await;
        self.bind(Some(resource))
            .await
            .unwrap_or_else(|e| panic!("bind {user}: {e:#}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for limits.rs (appended; nothing above changed).
// ---------------------------------------------------------------------------------------------

impl Client {
    /// Opens TCP to `addr` from the local address `source` (any 127.0.0.0/8 address works on
    /// loopback): for tests of per-address limits.
    pub async fn connect_from_ip(
        addr: SocketAddr,
        source: std::net::IpAddr,
        ca: PathBuf,
    ) -> Client {
        let sock = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .unwrap_or_else(|e| panic!("socket: {e}"));
        sock.bind(SocketAddr::new(source, 0))
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        let tcp = sock
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
        let _ = tcp.set_nodelay(true);
        Client::connect_from(tcp, ca)
    }

    /// A client over any byte stream, for example one end of `tokio::io::duplex` whose other
    /// end is served by `canto_net::serve_memory`. No TLS is possible on it.
    pub fn over_stream(io: Box<dyn Duplex>) -> Client {
        Client {
            io: Some(io),
            tcp: None,
            parser: StreamParser::new(Limits {
                max_stanza_bytes: 1 << 24,
                ..Limits::AUTHENTICATED
            }),
            pending: Default::default(),
            ca: PathBuf::new(),
            features: None,
            jid: None,
            exporter: None,
            ids: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for pep.rs and pubsub.rs (appended; nothing above changed).
// ---------------------------------------------------------------------------------------------

impl Client {
    /// Like [`Client::iq`], but what arrives before the reply stays queued for
    /// [`Client::next`], in order (pubsub notifications may precede the result they follow
    /// from, XEP-0060 §7.1.2.1).
    pub async fn iq_keep(&mut self, xml_with_id_placeholder: &str) -> Result<Element> {
        let id = self.id();
        self.send(&xml_with_id_placeholder.replace("{id}", &id))
            .await;
        let mut before = Vec::new();
        let reply = loop {
            match self.next_event().await {
                Ok(StreamEvent::Stanza(e))
                    if e.is("iq", canto_stanza::ns::CLIENT)
                        && e.attr("id") == Some(id.as_str()) =>
                {
                    break Ok(e);
                }
                Ok(ev) => before.push(ev),
                Err(e) => break Err(e),
            }
        };
        for ev in before.into_iter().rev() {
            self.pending.push_front(ev);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client over one end of a pipe whose server side has sent its stream header.
    async fn piped() -> (Client, tokio::io::DuplexStream) {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut c = Client::over_stream(Box::new(ours));
        let _ = theirs.write_all(header(HOST).as_bytes()).await;
        match c.next_event().await {
            Ok(StreamEvent::Header(_)) => {}
            other => panic!("expected the header, got {other:?}"),
        }
        (c, theirs)
    }

    #[tokio::test]
    async fn nothing_within_waits_out_the_whole_window_when_nothing_comes() {
        let (mut c, _theirs) = piped().await;
        let t = std::time::Instant::now();
        assert!(c.nothing_within(Duration::from_millis(50)).await);
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn nothing_within_fails_on_any_byte_a_partial_stanza_or_whitespace() {
        for arrives in ["<message to='a@localhost'><bo", " "] {
            let (mut c, mut theirs) = piped().await;
            let _ = theirs.write_all(arrives.as_bytes()).await;
            assert!(
                !c.nothing_within(Duration::from_millis(200)).await,
                "{arrives:?} counted as nothing"
            );
        }
        // Late in the window too; what arrived is kept for next().
        let (mut c, mut theirs) = piped().await;
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = theirs.write_all(b"<message id='m'><body>x").await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = theirs.write_all(b"</body></message>").await;
            theirs
        });
        assert!(!c.nothing_within(Duration::from_millis(500)).await);
        let m = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(m.attr("id"), Some("m"), "{m}");
        drop(late.await);
    }

    #[tokio::test]
    async fn sync_keeps_what_arrived_before_the_answer_in_order() {
        let (mut c, theirs) = piped().await;
        let (mut r, mut w) = tokio::io::split(theirs);
        let server = tokio::spawn(async move {
            // Read until the ping, then answer after two other stanzas.
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let id = loop {
                let n = r.read(&mut buf).await.unwrap_or(0);
                assert!(n > 0, "no ping");
                got.extend_from_slice(&buf[..n]);
                let s = String::from_utf8_lossy(&got).into_owned();
                if let Some(rest) = s.split_once("id='").map(|(_, r)| r.to_string())
                    && let Some((id, _)) = rest.split_once('\'')
                    && s.contains("</iq>")
                {
                    break id.to_string();
                }
            };
            let answer = format!(
                "<message id='one'/><presence id='two'/><iq type='result' id='{id}'/><message id='three'/>"
            );
            let _ = w.write_all(answer.as_bytes()).await;
            (r, w)
        });
        c.sync().await;
        for want in ["one", "two", "three"] {
            let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(e.attr("id"), Some(want), "{e}");
        }
        drop(server.await);
    }
}

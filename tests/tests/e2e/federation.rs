//! Federation between two Canto servers on loopback (issue 14; docs/federation.md): SASL
//! EXTERNAL with certificates from a test CA, dialback without trusted certificates,
//! `secure_auth`, bounces, and spoofing attempts by a raw peer. DNS answers are injected
//! through the resolver trait (`StaticResolver`); the real-peer tests (Prosody, ejabberd) are
//! in federation_peers.rs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canto_net::s2s::dns::{SrvRecord, StaticResolver};
use canto_tests::{Client, ScratchDir, TestServer, free_addr, test_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A test CA that issues certificates (all also naming `localhost`, the name the test client
/// checks on c2s).
pub(super) struct Pki {
    pub(super) dir: ScratchDir,
    pub(super) ca_pem: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    pub(super) fn new() -> Pki {
        let dir = ScratchDir::new("fed-pki");
        let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "Canto federation test CA");
        let ca = p.self_signed(&ca_key).unwrap_or_else(|e| panic!("{e}"));
        let ca_pem = dir.path("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap_or_else(|e| panic!("{e}"));
        Pki {
            dir,
            ca_pem,
            ca_params: p,
            ca_key,
        }
    }

    /// A certificate for `names` (DNS-IDs) signed by the CA: (chain, key) paths.
    pub(super) fn issue(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        sans.push("localhost".into());
        let mut p = CertificateParams::new(sans).unwrap_or_else(|e| panic!("{e}"));
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap_or_else(|e| panic!("{e}"));
        let c = self.dir.path(&format!("{}.crt", names[0]));
        let k = self.dir.path(&format!("{}.key", names[0]));
        std::fs::write(&c, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        (c, k)
    }

    /// A self-signed certificate for `name` (and localhost), trusted by nobody.
    pub(super) fn self_signed(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let p = CertificateParams::new(vec![name.to_string(), "localhost".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let cert = p.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let c = self.dir.path(&format!("{name}.self.crt"));
        let k = self.dir.path(&format!("{name}.self.key"));
        std::fs::write(&c, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        (c, k)
    }
}

/// DNS for `peers`: each domain has an `_xmpp-server` SRV record to itself on its port, and
/// an A record 127.0.0.1.
pub(super) fn resolver(peers: &[(&str, u16)]) -> StaticResolver {
    let mut r = StaticResolver::new();
    for (d, port) in peers {
        r = r
            .srv(
                &format!("_xmpp-server._tcp.{d}"),
                vec![SrvRecord::new(0, 1, *port, *d)],
            )
            .ips(d, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    r
}

/// How a test server is set up.
pub(super) struct Opts {
    pub(super) domain: &'static str,
    pub(super) cert: (PathBuf, PathBuf),
    pub(super) trust_ca: Option<PathBuf>,
    pub(super) secure_auth: bool,
    pub(super) require_encryption: bool,
    pub(super) connect_timeout: u64,
    /// Further configuration.
    pub(super) tweak: Option<fn(&mut canto_core::Config)>,
}

pub(super) async fn server(o: Opts, port: u16, dns: StaticResolver) -> TestServer {
    let mut c = test_config();
    c.hosts = vec![o.domain.to_string()];
    c.s2s.listen = vec![format!("127.0.0.1:{port}")];
    c.s2s.secure_auth = o.secure_auth;
    c.s2s.require_encryption = o.require_encryption;
    c.s2s.connect_timeout = o.connect_timeout;
    if let Some(ca) = o.trust_ca {
        c.s2s.ca_file = ca;
    }
    if let Some(f) = o.tweak {
        f(&mut c);
    }
    c.certificates.insert(
        o.domain.to_string(),
        canto_core::config::CertificateConfig {
            certificate: o.cert.0,
            key: o.cert.1,
        },
    );
    let s = TestServer::with_resolver(c, Arc::new(dns)).await;
    for u in ["alice", "bob"] {
        s.add_user_on(o.domain, u, "pw").await;
    }
    s
}

/// Two servers, a.test and b.test, that find each other.
pub(super) struct Pair {
    pub(super) pki: Pki,
    pub(super) a: TestServer,
    pub(super) b: TestServer,
}

impl Pair {
    pub(super) async fn new(trusted: bool, secure_auth: bool) -> Pair {
        let pki = Pki::new();
        let (pa, pb) = (free_addr().port(), free_addr().port());
        let dns = || resolver(&[("a.test", pa), ("b.test", pb)]);
        let cert = |d| {
            if trusted {
                pki.issue(&[d])
            } else {
                pki.self_signed(d)
            }
        };
        let trust = trusted.then(|| pki.ca_pem.clone());
        let a = server(
            Opts {
                domain: "a.test",
                cert: cert("a.test"),
                trust_ca: trust.clone(),
                secure_auth,
                require_encryption: true,
                connect_timeout: 10,
                tweak: None,
            },
            pa,
            dns(),
        )
        .await;
        let b = server(
            Opts {
                domain: "b.test",
                cert: cert("b.test"),
                trust_ca: trust,
                secure_auth,
                require_encryption: true,
                connect_timeout: 10,
                tweak: None,
            },
            pb,
            dns(),
        )
        .await;
        Pair { pki, a, b }
    }

    /// The CA file the c2s clients trust: the test CA, or (self-signed) each server's own.
    pub(super) fn client_ca(&self, domain: &str) -> PathBuf {
        let own = self.pki.dir.path(&format!("{domain}.self.crt"));
        if own.exists() {
            own
        } else {
            self.pki.ca_pem.clone()
        }
    }

    pub(super) async fn login(&self, on_a: bool, user: &str, res: &str) -> Client {
        let (s, d) = if on_a {
            (&self.a, "a.test")
        } else {
            (&self.b, "b.test")
        };
        s.login_with_ca(&self.client_ca(d), d, user, "pw", res)
            .await
    }
}

async fn exchange_everything(p: &Pair) {
    let mut alice = p.login(true, "alice", "phone").await;
    let mut bob = p.login(false, "bob", "laptop").await;
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    // A message each way (RFC 6121 §5), from the sender's full JID.
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    canto_tests::assert_message_flows(&mut bob, &mut alice).await;
    // An IQ each way: to the other server, and to the other user's full JID (answered by the
    // client).
    let r = alice
        .iq("<iq type='get' id='{id}' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("ping b.test: {e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("b.test"), "{r}");
    let r = bob
        .iq("<iq type='get' id='{id}' to='a.test'><query xmlns='jabber:iq:version'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("version a.test: {e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // A presence subscription each way (RFC 6121 §3): both rosters end with `both`, and each
    // sees the other's presence.
    canto_tests::subscribe_to(&mut alice, &mut bob).await;
    canto_tests::subscribe_to(&mut bob, &mut alice).await;
    for (c, other) in [(&mut alice, "bob@b.test"), (&mut bob, "alice@a.test")] {
        let r = c
            .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("roster: {e:#}"));
        let item = r
            .children()
            .flat_map(|q| q.children())
            .find(|i| i.attr("jid") == Some(other))
            .unwrap_or_else(|| panic!("{other} not in roster: {r}"));
        assert_eq!(item.attr("subscription"), Some("both"), "{r}");
    }
    // Unavailable crosses too (RFC 6121 §4.5.2).
    bob.send("<presence type='unavailable'/>").await;
    alice
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from").is_some_and(|f| f.starts_with("bob@b.test"))
        })
        .await
        .unwrap_or_else(|e| panic!("no unavailable from bob: {e:#}"));
}

#[tokio::test]
async fn sasl_external_between_two_cantos() {
    let p = Pair::new(true, true).await;
    exchange_everything(&p).await;
    // a.test opened the stream and authenticated with its certificate; b.test answered on
    // the same stream (XEP-0288), proved by the certificate a.test checked when it opened it,
    // and opened none of its own.
    assert_eq!(p.b.running.s2s.auth_method("a.test"), Some("EXTERNAL"));
    assert_eq!(p.a.running.s2s.auth_method("b.test"), Some("bidi"));
    assert_eq!(p.a.running.s2s.outgoing_connects(), 1);
    assert_eq!(p.b.running.s2s.outgoing_connects(), 0);
}

#[tokio::test]
async fn without_bidi_each_side_opens_its_own_stream() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let dns = || resolver(&[("a.test", pa), ("b.test", pb)]);
    let opts = |d: &'static str| Opts {
        domain: d,
        cert: pki.issue(&[d]),
        trust_ca: Some(pki.ca_pem.clone()),
        secure_auth: true,
        require_encryption: true,
        connect_timeout: 10,
        tweak: Some(|c| c.s2s.bidi = false),
    };
    let a = server(opts("a.test"), pa, dns()).await;
    let b = server(opts("b.test"), pb, dns()).await;
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    canto_tests::assert_message_flows(&mut bob, &mut alice).await;
    assert_eq!(a.running.s2s.auth_method("b.test"), Some("EXTERNAL"));
    assert_eq!(b.running.s2s.auth_method("a.test"), Some("EXTERNAL"));
    assert_eq!(a.running.s2s.outgoing_connects(), 1);
    assert_eq!(b.running.s2s.outgoing_connects(), 1);
}

#[tokio::test]
async fn dialback_when_certificates_are_not_trusted() {
    let p = Pair::new(false, false).await;
    exchange_everything(&p).await;
    assert_eq!(p.a.running.s2s.auth_method("b.test"), Some("dialback"));
    assert_eq!(p.b.running.s2s.auth_method("a.test"), Some("dialback"));
}

#[tokio::test]
async fn secure_auth_refuses_a_peer_without_a_valid_certificate() {
    // Neither trusts the other's self-signed certificate, and both require valid ones.
    let p = Pair::new(false, true).await;
    let mut alice = p.login(true, "alice", "r").await;
    alice
        .send("<message to='bob@b.test' id='m1' type='chat'><body>x</body></message>")
        .await;
    let e = alice
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await
        .unwrap_or_else(|e| panic!("no bounce: {e:#}"));
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("remote-server-not-found"),
        "{e}"
    );
    assert_eq!(e.attr("from"), Some("bob@b.test"));
    assert_eq!(p.b.running.s2s.auth_method("a.test"), None);
}

#[tokio::test]
async fn unknown_and_unreachable_domains_bounce() {
    let pki = Pki::new();
    let port = free_addr().port();
    // nowhere.test has no records at all; slow.test never answers.
    let dns = resolver(&[("a.test", port)])
        .hang("_xmpp-server._tcp.slow.test")
        .hang("_xmpps-server._tcp.slow.test")
        .hang("slow.test");
    let a = server(
        Opts {
            domain: "a.test",
            cert: pki.issue(&["a.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: true,
            require_encryption: true,
            connect_timeout: 1,
            tweak: None,
        },
        port,
        dns,
    )
    .await;
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    alice
        .send("<iq type='get' id='q1' to='nowhere.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let e = alice
        .wait_for(|e| e.attr("id") == Some("q1"))
        .await
        .unwrap_or_else(|e| panic!("no bounce: {e:#}"));
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("remote-server-not-found"),
        "{e}"
    );
    let t = std::time::Instant::now();
    alice
        .send("<message to='x@slow.test' id='m2'><body>x</body></message>")
        .await;
    let e = alice
        .wait_for(|e| e.attr("id") == Some("m2"))
        .await
        .unwrap_or_else(|e| panic!("no bounce: {e:#}"));
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("remote-server-timeout"),
        "{e}"
    );
    assert!(t.elapsed() < WAIT);
    // Unavailable presence to such a domain is not bounced (RFC 6120 §8.3.1).
    alice
        .send("<presence to='x@nowhere.test' type='unavailable'/>")
        .await;
    assert!(alice.nothing_within(Duration::from_millis(500)).await);
}

/// A raw peer: TCP to `port`, our stream header as `from`, the answer up to the features.
async fn raw_peer(port: u16, from: &str, to: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    );
    tcp.write_all(h.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:features>").await;
    (tcp, got)
}

async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).contains(needle) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A server that allows plaintext streams, so a raw peer can speak to it without TLS.
async fn plaintext_server(pki: &Pki, port: u16, other: u16) -> TestServer {
    plaintext_server_with(pki, port, other, None).await
}

async fn plaintext_server_with(
    pki: &Pki,
    port: u16,
    other: u16,
    tweak: Option<fn(&mut canto_core::Config)>,
) -> TestServer {
    server(
        Opts {
            domain: "b.test",
            cert: pki.issue(&["b.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: false,
            require_encryption: false,
            connect_timeout: 3,
            tweak,
        },
        port,
        resolver(&[("a.test", other), ("b.test", port)]),
    )
    .await
}

#[tokio::test]
async fn spoofing_is_refused() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let b = plaintext_server(&pki, pb, pa).await;
    let _ = &b;

    // An unsolicited dialback result ("valid", as if we had been verified).
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    tcp.write_all(b"<db:result type='valid' from='a.test' to='b.test'/>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(got.contains("<not-authorized"), "{got}");

    // Stanzas before any authentication.
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    tcp.write_all(b"<message from='x@a.test' to='bob@b.test'><body>hi</body></message>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(got.contains("<not-authorized"), "{got}");

    // A dialback key nobody made: b.test asks a.test's authoritative server (nobody listens
    // there), which cannot confirm it: refused, and no stanza from a.test is accepted.
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    tcp.write_all(b"<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "type=").await;
    assert!(
        got.contains("type='error'") || got.contains("type='invalid'"),
        "{got}"
    );
    tcp.write_all(b"<message from='x@a.test' to='bob@b.test'><body>hi</body></message>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(got.contains("<not-authorized"), "{got}");

    // A verification request for a key b.test never made is answered invalid.
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    tcp.write_all(b"<db:verify from='a.test' to='b.test' id='abc'>deadbeef</db:verify>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "verify").await;
    assert!(got.contains("type='invalid'"), "{got}");

    // A stream to a domain not served here.
    let mut tcp = TcpStream::connect(("127.0.0.1", pb))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' to='elsewhere.test' version='1.0'>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(got.contains("<host-unknown"), "{got}");
    // RFC 6120 §4.9.1.2: even then, our stream header comes first.
    assert!(got.starts_with("<?xml"), "{got}");
    // Garbage before any header: the same (found by the s2s fuzz target).
    let mut tcp = TcpStream::connect(("127.0.0.1", pb))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(b"\x7f<<<")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(
        got.starts_with("<?xml") && got.contains("<stream:error>"),
        "{got}"
    );
}

#[tokio::test]
async fn a_stanza_from_a_domain_the_stream_did_not_prove_closes_it() {
    // a.test and b.test federate with dialback over plaintext... the raw peer instead proves
    // a.test honestly by being a.test's authoritative server? It cannot: so the proof comes
    // from the real a.test, and the spoof is a second domain on the same stream.
    let p = Pair::new(true, true).await;
    let mut alice = p.login(true, "alice", "r").await;
    let mut bob = p.login(false, "bob", "r").await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    // Now a raw peer with a certificate for evil.test (from the same CA) authenticates as
    // evil.test with SASL EXTERNAL and then claims a.test.
    let evil = p.pki.issue(&["evil.test"]);
    let port = p.b.running.s2s_addrs[0].port();
    let got = evil_peer(&p.pki.ca_pem, &evil, port).await;
    assert!(got.contains("<invalid-from"), "{got}");
    // Bob saw nothing of it, and a.test still reaches him.
    assert!(bob.nothing_within(Duration::from_millis(300)).await);
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
}

/// TLS with a client certificate for evil.test, SASL EXTERNAL as evil.test, then a message
/// from a.test. Returns what b.test sent after it.
async fn evil_peer(ca: &Path, cert: &(PathBuf, PathBuf), port: u16) -> String {
    let cfg = client_cert_config(ca, cert);
    let (mut tcp, features) = raw_peer(port, "evil.test", "b.test").await;
    assert!(features.contains("starttls"), "{features}");
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "proceed").await;
    assert!(got.contains("proceed"), "{got}");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls_pki_types::ServerName::try_from("b.test").unwrap_or_else(|e| panic!("{e}"));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='evil.test' to='b.test' version='1.0'>";
    tls.write_all(header.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let f = read_tls(&mut tls, "</stream:features>").await;
    assert!(
        f.contains("EXTERNAL"),
        "EXTERNAL offered for a valid certificate: {f}"
    );
    tls.write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = read_tls(&mut tls, "success").await;
    assert!(s.contains("<success"), "{s}");
    tls.write_all(header.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read_tls(&mut tls, "</stream:features>").await;
    // evil.test may send as itself (a stanza to a missing account is answered)...
    tls.write_all(b"<message from='mallory@a.test' to='bob@b.test' type='chat'><body>I am alice's server</body></message>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read_tls(&mut tls, "</stream:stream>").await
}

async fn read_tls(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).contains(needle) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn limits_close_only_the_offending_stream() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let b = plaintext_server_with(
        &pki,
        pb,
        pa,
        Some(|c| {
            c.s2s.max_stanza_size = 20_000;
            c.s2s.max_queued_bytes = 20_000;
            c.s2s.max_dialback_attempts = 2;
        }),
    )
    .await;
    let _ = &b;
    // A stanza over s2s.max_stanza_size: policy-violation with <stanza-too-big/>.
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    let big = format!(
        "<message from='x@a.test' to='bob@b.test'><body>{}</body></message>",
        "x".repeat(30_000)
    );
    tcp.write_all(big.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(
        got.contains("<policy-violation") && got.contains("stanza-too-big"),
        "{got}"
    );

    // Dialback requests beyond s2s.max_dialback_attempts.
    let (mut tcp, _) = raw_peer(pb, "a.test", "b.test").await;
    for i in 0..3 {
        let v = format!("<db:verify from='a.test' to='b.test' id='i{i}'>00</db:verify>");
        tcp.write_all(v.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert_eq!(got.matches("type='invalid'").count(), 2, "{got}");
    assert!(got.contains("<policy-violation"), "{got}");

    // Meanwhile the server serves its users.
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    canto_tests::assert_alive(&mut bob).await;
}

#[tokio::test]
async fn the_queue_for_a_remote_domain_is_bounded() {
    let pki = Pki::new();
    let port = free_addr().port();
    let a = server(
        Opts {
            domain: "a.test",
            cert: pki.issue(&["a.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: true,
            require_encryption: true,
            connect_timeout: 5,
            tweak: Some(|c| {
                c.s2s.max_stanza_size = 10_000;
                c.s2s.max_queued_bytes = 10_000;
            }),
        },
        port,
        resolver(&[("a.test", port)])
            .hang("_xmpp-server._tcp.slow.test")
            .hang("_xmpps-server._tcp.slow.test"),
    )
    .await;
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    let body = "y".repeat(4000);
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='x@slow.test' id='q{i}'><body>{body}</body></message>"
            ))
            .await;
    }
    // Two fit in 10,000 bytes; the third is refused at once (RFC 6120 §8.3.3.18).
    let e = alice
        .wait_for(|e| e.attr("id") == Some("q2"))
        .await
        .unwrap_or_else(|e| panic!("no bounce: {e:#}"));
    assert_eq!(
        canto_tests::error_condition(&e).as_deref(),
        Some("resource-constraint"),
        "{e}"
    );
    // The first two wait for the connection, then bounce with remote-server-timeout.
    for id in ["q0", "q1"] {
        let e = alice
            .wait_for(|e| e.attr("id") == Some(id))
            .await
            .unwrap_or_else(|e| panic!("no bounce for {id}: {e:#}"));
        assert_eq!(
            canto_tests::error_condition(&e).as_deref(),
            Some("remote-server-timeout"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn idle_streams_close_and_come_back() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let dns = || resolver(&[("a.test", pa), ("b.test", pb)]);
    let opts = |d: &'static str| Opts {
        domain: d,
        cert: pki.issue(&[d]),
        trust_ca: Some(pki.ca_pem.clone()),
        secure_auth: true,
        require_encryption: true,
        connect_timeout: 10,
        tweak: Some(|c| c.s2s.idle_timeout = 1),
    };
    let a = server(opts("a.test"), pa, dns()).await;
    let b = server(opts("b.test"), pb, dns()).await;
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    assert_eq!(a.running.s2s.outgoing_routes().len(), 1);
    // s2s.idle_timeout: the stream closes after a second without traffic...
    let t = std::time::Instant::now();
    while !a.running.s2s.outgoing_routes().is_empty() {
        assert!(t.elapsed() < WAIT, "the idle stream stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the next stanza opens a new one.
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
}

/// DANE-EE (RFC 7673, RFC 7671 §5.1): with `dns.dane` and DNSSEC-validated answers, a TLSA
/// record for the SRV target stands for the PKI: b.test's self-signed certificate is accepted
/// when the record names its key, and refused when it names another.
#[tokio::test]
async fn dane_tlsa_records_decide() {
    use canto_net::s2s::dns::Tlsa;
    use rcgen::PublicKeyData;
    use sha2::Digest;
    for matching in [true, false] {
        let pki = Pki::new();
        let (pa, pb) = (free_addr().port(), free_addr().port());
        let (bc, bk) = pki.self_signed("b.test");
        let pem = std::fs::read_to_string(&bk).unwrap_or_else(|e| panic!("{e}"));
        let key = KeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("{e}"));
        let mut spki = sha2::Sha256::digest(key.subject_public_key_info()).to_vec();
        if !matching {
            spki[0] ^= 1;
        }
        let dns_a = resolver(&[("a.test", pa), ("b.test", pb)])
            .secure(true)
            .tlsa(
                &format!("_{pb}._tcp.b.test"),
                vec![Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: spki,
                }],
            );
        let a = server(
            Opts {
                domain: "a.test",
                cert: pki.issue(&["a.test"]),
                trust_ca: Some(pki.ca_pem.clone()),
                secure_auth: true,
                require_encryption: true,
                connect_timeout: 10,
                tweak: Some(|c| c.dns.dane = true),
            },
            pa,
            dns_a,
        )
        .await;
        let b = server(
            Opts {
                domain: "b.test",
                cert: (bc, bk),
                trust_ca: Some(pki.ca_pem.clone()),
                secure_auth: true,
                require_encryption: true,
                connect_timeout: 10,
                tweak: None,
            },
            pb,
            resolver(&[("a.test", pa), ("b.test", pb)]),
        )
        .await;
        let mut alice = a
            .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
            .await;
        let b_ca = pki.dir.path("b.test.self.crt");
        let mut bob = b.login_with_ca(&b_ca, "b.test", "bob", "pw", "r").await;
        if matching {
            canto_tests::assert_message_flows(&mut alice, &mut bob).await;
        } else {
            alice
                .send("<message to='bob@b.test' id='d1' type='chat'><body>x</body></message>")
                .await;
            let e = alice
                .wait_for(|e| e.attr("id") == Some("d1"))
                .await
                .unwrap_or_else(|e| panic!("no bounce: {e:#}"));
            assert_eq!(
                canto_tests::error_condition(&e).as_deref(),
                Some("remote-server-not-found"),
                "{e}"
            );
        }
    }
}

/// XEP-0368: a `_xmpps-server` SRV record sends the outgoing stream to a direct TLS listener.
#[tokio::test]
async fn direct_tls_targets_are_used() {
    let pki = Pki::new();
    let pa = free_addr().port();
    let (pb, pb_tls) = (free_addr().port(), free_addr().port());
    // b.test publishes only its direct TLS port.
    let dns = || {
        StaticResolver::new()
            .srv(
                "_xmpp-server._tcp.a.test",
                vec![SrvRecord::new(0, 1, pa, "a.test")],
            )
            .srv(
                "_xmpps-server._tcp.b.test",
                vec![SrvRecord::new(0, 1, pb_tls, "b.test")],
            )
            .ips("a.test", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .ips("b.test", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
    };
    let a = server(
        Opts {
            domain: "a.test",
            cert: pki.issue(&["a.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: true,
            require_encryption: true,
            connect_timeout: 10,
            tweak: Some(|c| c.s2s.bidi = false),
        },
        pa,
        dns(),
    )
    .await;
    let mut c = test_config();
    c.hosts = vec!["b.test".into()];
    c.s2s.listen = vec![format!("127.0.0.1:{pb}")];
    c.s2s.direct_tls_listen = vec![format!("127.0.0.1:{pb_tls}")];
    c.s2s.ca_file = pki.ca_pem.clone();
    c.s2s.bidi = false;
    let (bc, bk) = pki.issue(&["b.test"]);
    c.certificates.insert(
        "b.test".into(),
        canto_core::config::CertificateConfig {
            certificate: bc,
            key: bk,
        },
    );
    let b = TestServer::with_resolver(c, Arc::new(dns())).await;
    b.add_user_on("b.test", "bob", "pw").await;
    assert_eq!(b.running.s2s_direct_tls_addrs[0].port(), pb_tls);
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    assert_eq!(b.running.s2s.auth_method("a.test"), Some("EXTERNAL"));
}

/// RFC 6120 §4.9.3.19: a server that answers `<see-other-host/>` is left for the host it
/// names.
#[tokio::test]
async fn see_other_host_is_followed() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pr = redirector
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = redirector.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let answer = format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='r1' from='b.test' version='1.0'><stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>127.0.0.1:{pb}</see-other-host></stream:error></stream:stream>"
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    let dns = || {
        resolver(&[("a.test", pa)])
            .srv(
                "_xmpp-server._tcp.b.test",
                vec![SrvRecord::new(0, 1, pr, "b.test")],
            )
            .ips("b.test", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
    };
    let opts = |d: &'static str| Opts {
        domain: d,
        cert: pki.issue(&[d]),
        trust_ca: Some(pki.ca_pem.clone()),
        secure_auth: true,
        require_encryption: true,
        connect_timeout: 10,
        tweak: None,
    };
    let a = server(opts("a.test"), pa, dns()).await;
    let b = server(opts("b.test"), pb, dns()).await;
    let mut alice = a
        .login_with_ca(&pki.ca_pem, "a.test", "alice", "pw", "r")
        .await;
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
}

/// XEP-0220 §2.1.3 (piggybacking): one stream authenticates several domains of the same
/// originating server, each by its own key; a stanza from a domain it has not proved still
/// closes it. The keys are made from a.test's real secret, so b.test's callback to a.test
/// confirms them.
#[tokio::test]
async fn dialback_piggybacks_several_domains_on_one_stream() {
    let pki = Pki::new();
    let (pa, pb) = (free_addr().port(), free_addr().port());
    let a = server(
        Opts {
            domain: "a.test",
            cert: pki.issue(&["a.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: false,
            require_encryption: false,
            connect_timeout: 10,
            tweak: Some(|c| c.hosts.push("a2.test".into())),
        },
        pa,
        resolver(&[("a.test", pa), ("a2.test", pa), ("b.test", pb)]),
    )
    .await;
    let b = server(
        Opts {
            domain: "b.test",
            cert: pki.issue(&["b.test"]),
            trust_ca: Some(pki.ca_pem.clone()),
            secure_auth: false,
            require_encryption: false,
            connect_timeout: 10,
            tweak: None,
        },
        pb,
        resolver(&[("a.test", pa), ("a2.test", pa), ("b.test", pb)]),
    )
    .await;
    let secret = std::fs::read(a.dir.join("dialback.secret")).unwrap_or_else(|e| panic!("{e}"));
    let mut bob = b
        .login_with_ca(&pki.ca_pem, "b.test", "bob", "pw", "r")
        .await;
    let (mut tcp, features) = raw_peer(pb, "a.test", "b.test").await;
    let id = features
        .split("id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no stream id: {features}"))
        .to_string();
    for domain in ["a.test", "a2.test"] {
        let key = canto_proto::s2s::dialback_key(&secret, "b.test", domain, &id);
        tcp.write_all(
            format!("<db:result from='{domain}' to='b.test'>{key}</db:result>").as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let got = read_until(&mut tcp, "type=").await;
        assert!(
            got.contains("type='valid'") && got.contains(domain),
            "{domain}: {got}"
        );
    }
    for domain in ["a.test", "a2.test"] {
        tcp.write_all(
            format!("<message from='x@{domain}' to='bob@b.test/r' type='chat'><body>via {domain}</body></message>")
                .as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let m = bob
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(m.attr("from"), Some(format!("x@{domain}").as_str()));
    }
    tcp.write_all(b"<message from='x@a3.test' to='bob@b.test/r'><body>no</body></message>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_until(&mut tcp, "</stream:stream>").await;
    assert!(got.contains("<invalid-from"), "{got}");
}

/// `s2s.max_connections_per_domain`: authenticated streams from one domain beyond the limit
/// are refused (policy-violation); metrics count the s2s streams and how they authenticated.
#[tokio::test]
async fn connections_per_remote_domain_are_capped_and_counted() {
    let p = Pair::new(true, true).await;
    let mut alice = p.login(true, "alice", "r").await;
    let mut bob = p.login(false, "bob", "r").await;
    canto_tests::assert_message_flows(&mut alice, &mut bob).await;
    let evil = p.pki.issue(&["evil.test"]);
    let port = p.b.running.s2s_addrs[0].port();
    // The default cap (8) lets a second evil.test stream in; the test server's is changed below.
    let cfg = {
        let mut c = (*p.b.running.server.config()).clone();
        c.s2s.max_connections_per_domain = 1;
        c
    };
    p.b.running
        .server
        .reload_config(cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, second) = tokio::join!(
        external_stream(&p.pki.ca_pem, &evil, port, "evil.test"),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            external_stream(&p.pki.ca_pem, &evil, port, "evil.test").await
        }
    );
    assert!(first.contains("<success"), "{first}");
    assert!(second.contains("<policy-violation"), "{second}");
    let text = canto_net::metrics::render(&p.b.running.server);
    assert!(
        text.contains("canto_connections{kind=\"s2s_in\"}"),
        "{text}"
    );
    assert!(
        text.contains("canto_s2s_authentications_total{method=\"EXTERNAL\"}"),
        "{text}"
    );
}

/// TLS with a client certificate, SASL EXTERNAL as `domain`; returns what the server said,
/// after holding the stream open a moment.
async fn external_stream(ca: &Path, cert: &(PathBuf, PathBuf), port: u16, domain: &str) -> String {
    let cfg = client_cert_config(ca, cert);
    let (mut tcp, _) = raw_peer(port, domain, "b.test").await;
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read_until(&mut tcp, "proceed").await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls_pki_types::ServerName::try_from("b.test").unwrap_or_else(|e| panic!("{e}"));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' to='b.test' version='1.0'>"
    );
    tls.write_all(header.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read_tls(&mut tls, "</stream:features>").await;
    tls.write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = read_tls(&mut tls, ">").await;
    // Keep the first stream open while the second tries.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let more = tokio::time::timeout(
        Duration::from_millis(200),
        read_tls(&mut tls, "</stream:stream>"),
    )
    .await
    .unwrap_or_default();
    format!("{got}{more}")
}

/// A certificate for another name: a peer presenting evil.test's (valid, from the trusted CA)
/// while claiming a.test is refused SASL EXTERNAL, and a.test is not authenticated.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let p = Pair::new(true, true).await;
    let evil = p.pki.issue(&["evil.test"]);
    let port = p.b.running.s2s_addrs[0].port();
    let got = external_stream(&p.pki.ca_pem, &evil, port, "a.test").await;
    assert!(
        got.contains("<failure") && !got.contains("<success"),
        "{got}"
    );
    assert_eq!(p.b.running.s2s.auth_method("a.test"), None);
}

/// A TLS client configuration trusting `ca` and presenting the certificate `cert` (chain, key).
fn client_cert_config(ca: &Path, cert: &(PathBuf, PathBuf)) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert.0)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .collect();
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_file(&cert.1).unwrap_or_else(|e| panic!("{e}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("{e}")) {
        roots
            .add(c.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| panic!("{e}"))
}

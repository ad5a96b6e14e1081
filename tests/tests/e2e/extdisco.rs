//! XEP-0215 External Service Discovery end to end: STUN/TURN services from the configuration
//! and time-limited TURN credentials, checked against the TURN REST API scheme (username
//! `expiry:user`, password base64(HMAC-SHA1(secret, username))) recomputed here.
use base64::Engine;
use canto_modules::extdisco::{ExternalService, ExternalServices};
use canto_tests::*;
use canto_xml::Element;
use hmac::{KeyInit, Mac};

const EXTDISCO: &str = "urn:xmpp:extdisco:2";

async fn server() -> TestServer {
    let mut cfg = test_config();
    cfg.modules.push("extdisco".into());
    let services = ExternalServices(vec![
        ExternalService {
            kind: "stun".into(),
            host: "stun.example.net".into(),
            port: 3478,
            transport: Some("udp".into()),
            secret: None,
            ttl: 86_400,
        },
        ExternalService {
            kind: "turn".into(),
            host: "turn.example.net".into(),
            port: 3478,
            transport: Some("udp".into()),
            secret: Some("turn-secret".into()),
            ttl: 3_600,
        },
        ExternalService {
            kind: "turns".into(),
            host: "turn.example.net".into(),
            port: 5349,
            transport: Some("tcp".into()),
            secret: Some("other-secret".into()),
            ttl: 600,
        },
    ]);
    cfg.set_section_value("external_services", &services)
        .unwrap_or_else(|e| panic!("{e}"));
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    s
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

fn services(r: &Element, wrapper: &str) -> Vec<Element> {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.get_child(wrapper, EXTDISCO)
        .unwrap_or_else(|| panic!("no <{wrapper}/>: {r}"))
        .children()
        .filter(|c| c.is("service", EXTDISCO))
        .cloned()
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a service's credentials against the TURN REST API scheme and returns the expiry.
fn check_credentials(s: &Element, secret: &str, user: &str, ttl: u64) -> u64 {
    let username = s.attr("username").unwrap_or_else(|| panic!("{s}"));
    let (expiry, who) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("not expiry:user: {s}"));
    assert_eq!(who, user, "{s}");
    let expiry: u64 = expiry.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let now = now_secs();
    assert!(
        expiry + 60 >= now + ttl && expiry <= now + ttl + 60,
        "expiry {expiry} is not now ({now}) + {ttl}: {s}"
    );
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| panic!("hmac"));
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(s.attr("password"), Some(want.as_str()), "{s}");
    // XEP-0215 §3: `expires` is the XEP-0082 DateTime of the same instant.
    assert_eq!(
        s.attr("expires"),
        Some(canto_stanza::datetime::from_millis((expiry * 1000) as i64).as_str()),
        "{s}"
    );
    expiry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_from_the_configuration_with_turn_credentials() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    let mut b = s.login("bob", "pb", "b1").await;
    // XEP-0215 §2: advertised by the server.
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(r.to_string().contains("var='urn:xmpp:extdisco:2'"), "{r}");
    // §3.1: every configured service, in order, with its address.
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
    )
    .await;
    let all = services(&r, "services");
    let described: Vec<(String, String, String, String)> = all
        .iter()
        .map(|s| {
            let at = |n: &str| s.attr(n).unwrap_or_default().to_string();
            (at("type"), at("host"), at("port"), at("transport"))
        })
        .collect();
    assert_eq!(
        described,
        [
            ("stun", "stun.example.net", "3478", "udp"),
            ("turn", "turn.example.net", "3478", "udp"),
            ("turns", "turn.example.net", "5349", "tcp"),
        ]
        .map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
    );
    // STUN needs no credentials; each TURN service gets its own, for this user, from its own
    // secret and lifetime.
    for attr in ["username", "password", "expires"] {
        assert!(all[0].attr(attr).is_none(), "{}", all[0]);
    }
    check_credentials(&all[1], "turn-secret", "alice@localhost", 3_600);
    check_credentials(&all[2], "other-secret", "alice@localhost", 600);
    // Another user gets other credentials.
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='turn'/></iq>",
    )
    .await;
    let turn = services(&r, "services");
    // §3.1: the type filter: exactly the services of that type.
    assert_eq!(turn.len(), 1, "{r}");
    assert_eq!(turn[0].attr("port"), Some("3478"), "{r}");
    check_credentials(&turn[0], "turn-secret", "bob@localhost", 3_600);
    assert_ne!(turn[0].attr("password"), all[1].attr("password"));
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='ftp'/></iq>",
    )
    .await;
    assert!(services(&r, "services").is_empty(), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_for_one_service() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a1").await;
    // XEP-0215 §3.2: credentials for a named service; the port is optional.
    for xml in [
        "<iq type='get' id='{id}' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'><service type='turns' host='turn.example.net' port='5349'/></credentials></iq>",
        "<iq type='get' id='{id}' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'><service type='turns' host='turn.example.net'/></credentials></iq>",
    ] {
        let r = ask(&mut a, xml).await;
        let got = services(&r, "credentials");
        assert_eq!(got.len(), 1, "{r}");
        assert_eq!(got[0].attr("port"), Some("5349"), "{r}");
        check_credentials(&got[0], "other-secret", "alice@localhost", 600);
    }
    // A service that is not configured (wrong host, type or port): item-not-found.
    for svc in [
        "<service type='turn' host='elsewhere.example.net'/>",
        "<service type='stuns' host='turn.example.net'/>",
        "<service type='turn' host='turn.example.net' port='9999'/>",
    ] {
        let r = ask(
            &mut a,
            &format!("<iq type='get' id='{{id}}' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'>{svc}</credentials></iq>"),
        )
        .await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("item-not-found"),
            "{svc}: {r}"
        );
    }
    // No service named at all: bad-request.
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'/></iq>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_without_the_module() {
    let s = TestServer::start().await;
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a1").await;
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    s.stop().await;
}

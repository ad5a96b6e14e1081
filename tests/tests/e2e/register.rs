//! XEP-0077 in-band registration: password change and cancellation for a logged-in user.
use canto_proto::sasl::HashAlgo;
use canto_tests::*;

async fn server() -> TestServer {
    let mut cfg = test_config();
    cfg.modules.push("register".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "old-password").await;
    s.add_user("bob", "pb").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_takes_effect_for_the_next_login() {
    let s = server().await;
    let mut a = s.login("alice", "old-password", "a").await;
    let r = a
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:register'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        r.to_string().contains("<registered/>") && r.to_string().contains("alice"),
        "{r}"
    );
    // XEP-0077 §3.3: only the account's own username.
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>alice</username></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>alice</username><password>new-password</password></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    // The old password no longer works; the new one does.
    let mut c = s.connect().await;
    c.open(HOST).await;
    c.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    let old = c
        .auth_scram(HashAlgo::Sha256, "alice", "old-password", None)
        .await;
    assert!(old.is_err_and(|e| e.to_string().contains("not-authorized")));
    let _ = s.login("alice", "new-password", "again").await;
    // Someone else's registration: forbidden.
    let mut b = s.login("bob", "pb", "b").await;
    let r = b
        .iq("<iq type='set' id='{id}' to='alice@localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_removes_the_account_after_answering() {
    let s = server().await;
    let mut a = s.login("alice", "old-password", "a").await;
    let r = a
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // XEP-0077 §3.2: a result, then the stream ends.
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(a.closed().await, Closed::Error("not-authorized".into()));
    assert_eq!(
        s.storage.accounts.exists("localhost", "alice").await.ok(),
        Some(false)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_before_authentication() {
    let s = server().await;
    let mut c = s.connect().await;
    c.open(HOST).await;
    // XEP-0077 §4: not offered on an unencrypted stream when encryption is required.
    let f = c.features.clone().unwrap_or_default();
    assert!(
        !f.has_child("register", "http://jabber.org/features/iq-register"),
        "{f}"
    );
    c.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    let f = c.features.clone().unwrap_or_default();
    assert!(
        f.has_child("register", "http://jabber.org/features/iq-register"),
        "{f}"
    );
    // XEP-0115 §6.3: the server's capabilities are in the features too.
    assert!(
        f.get_child("c", "http://jabber.org/protocol/caps")
            .is_some_and(|c| c.attr("hash") == Some("sha-1") && c.attr("ver").is_some()),
        "{f}"
    );
    // §3.1: the form, then the account.
    let form = c
        .iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:register'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        form.to_string().contains("<username/>") && form.to_string().contains("<password/>"),
        "{form}"
    );
    let taken = c
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&taken).as_deref(), Some("conflict"));
    let missing = c
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>carol</username></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&missing).as_deref(), Some("not-acceptable"));
    let ok = c
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>Carol</username><password>pc</password></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ok.attr("type"), Some("result"));
    // The per-address rate limit: a second account from here must wait.
    let again = c
        .iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>dave</username><password>pd</password></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&again).as_deref(),
        Some("resource-constraint")
    );
    // The new account logs in (username normalized).
    let _carol = s.login("carol", "pc", "c").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_registration_without_the_module() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.open(HOST).await;
    c.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    assert!(
        !c.features
            .clone()
            .unwrap_or_default()
            .has_child("register", "http://jabber.org/features/iq-register")
    );
    c.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>x</username><password>y</password></query></iq>").await;
    assert_eq!(c.closed().await, Closed::Error("not-authorized".into()));
    assert_eq!(
        s.storage.accounts.exists("localhost", "x").await.ok(),
        Some(false)
    );
    s.stop().await;
}

async fn ask(c: &mut Client, xml: &str) -> canto_xml::Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

/// A stream from `ip`, over TLS, ready for registration or SASL.
async fn tls_from(s: &TestServer, ip: &str) -> Client {
    let mut c = Client::connect_from_ip(
        s.addr,
        ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}")),
        s.cert_pem_path(),
    )
    .await;
    c.open(HOST).await;
    c.starttls().await.unwrap_or_else(|e| panic!("{e:#}"));
    c.open(HOST).await;
    c
}

fn register(user: &str, pw: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:register'><username>{user}</username><password>{pw}</password></query></iq>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_removes_every_trace_of_the_account() {
    let mut cfg = test_config();
    cfg.modules.push("register".into());
    cfg.modules.push("mam".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut b = s.login("bob", "pb", "b1").await;
    // Leave data in every store: vCard, private XML, blocklist, roster, archive, offline.
    for xml in [
        "<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:private'><p xmlns='urn:example:p'>secret</p></query></iq>",
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='mallory@localhost'/></block></iq>",
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='C'/></query></iq>",
    ] {
        let r = ask(&mut a1, xml).await;
        assert_eq!(r.attr("type"), Some("result"), "{xml}: {r}");
    }
    a1.send("<message to='bob@localhost/b1' type='chat'><body>archived</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Neither of alice's resources is available, so this one is stored offline.
    b.send("<message to='alice@localhost' type='chat'><body>offline</body></message>")
        .await;
    assert_alive(&mut b).await;

    // XEP-0077 §3.2: the result, then every session of the account ends.
    let r = ask(
        &mut a1,
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><remove/></query></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(a1.closed().await, Closed::Error("not-authorized".into()));
    assert_eq!(a2.closed().await, Closed::Error("not-authorized".into()));
    assert!(
        poll_until(WAIT, || !s.is_bound("alice@localhost/a1")).await,
        "session still bound"
    );
    // The old password no longer opens anything.
    let mut c = s.connect_tls().await;
    assert!(
        c.auth_scram(canto_proto::sasl::HashAlgo::Sha256, "alice", "pa", None)
            .await
            .is_err()
    );
    // A new account of the same name starts empty (as after `canto user del`).
    s.add_user("alice", "new").await;
    let mut n = s.login("alice", "new", "n1").await;
    let r = ask(
        &mut n,
        "<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.get_child("vCard", "vcard-temp")
            .is_some_and(|v| v.children().next().is_none()),
        "{r}"
    );
    let r = ask(
        &mut n,
        "<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><p xmlns='urn:example:p'/></query></iq>",
    )
    .await;
    assert!(!r.to_string().contains("secret"), "{r}");
    let r = ask(
        &mut n,
        "<iq type='get' id='{id}'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    )
    .await;
    assert!(!r.to_string().contains("mallory"), "{r}");
    let r = ask(
        &mut n,
        "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    assert!(!r.to_string().contains("carol"), "{r}");
    let r = ask(
        &mut n,
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2'/></iq>",
    )
    .await;
    assert!(
        r.get_child("fin", "urn:xmpp:mam:2")
            .is_some_and(|f| f.to_string().contains("<count>0</count>")),
        "{r}"
    );
    n.send("<presence/>").await;
    let got = n.drain().await;
    assert!(!got.iter().any(|e| e.name() == "message"), "{got:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_per_address_and_counts_only_successes() {
    let s = server().await;
    let mut c = tls_from(&s, "127.0.0.1").await;
    // XEP-0077 §3.1: missing or empty fields: not-acceptable; a username that is no valid
    // localpart: jid-malformed. None of these uses up the address's allowance.
    for (xml, want) in [
        (
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><password>x</password></query></iq>".to_string(),
            "not-acceptable",
        ),
        (register("", "x"), "not-acceptable"),
        (register("carol", ""), "not-acceptable"),
        (register("car@ol", "x"), "jid-malformed"),
        (
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'/></iq>".to_string(),
            "not-acceptable",
        ),
    ] {
        let r = ask(&mut c, &xml).await;
        assert_eq!(error_condition(&r).as_deref(), Some(want), "{xml}: {r}");
    }
    assert_eq!(
        s.storage.accounts.exists(HOST, "carol").await.ok(),
        Some(false)
    );
    let r = ask(&mut c, &register("carol", "pc")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // The next account from 127.0.0.1 must wait (type wait, RFC 6120 §8.3.2) …
    let mut again = tls_from(&s, "127.0.0.1").await;
    let r = ask(&mut again, &register("dave", "pd")).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("resource-constraint"),
        "{r}"
    );
    assert_eq!(error_type(&r).as_deref(), Some("wait"), "{r}");
    // … another address may register at once.
    let mut other = tls_from(&s, "127.0.0.2").await;
    let r = ask(&mut other, &register("dave", "pd")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let _dave = s.login("dave", "pd", "d").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_username_is_conflict_right_after_a_registration_from_the_same_address() {
    let s = server().await;
    let mut c = tls_from(&s, "127.0.0.3").await;
    let r = ask(&mut c, &register("erin", "pe")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // XEP-0077 §3.1: a username that exists is conflict, also while this address must wait
    // before registering another account.
    for user in ["bob", "Erin"] {
        let r = ask(&mut c, &register(user, "x")).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("conflict"),
            "{user}: {r}"
        );
    }
    let r = ask(&mut c, &register("frank", "pf")).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("resource-constraint"),
        "{r}"
    );
    s.stop().await;
}

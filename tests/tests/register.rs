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

//! Connect, STARTTLS, SCRAM, bind, ping, message between two accounts.
use canto_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_exchange_a_message() {
    let s = TestServer::start().await;
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;
    let mut a = s.login("alice", "wonderland", "home").await;
    let mut b = s.login("bob", "builder", "phone").await;
    assert_eq!(a.jid.as_deref(), Some("alice@localhost/home"));
    let pong = a
        .iq("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        pong.ok()
            .and_then(|p| p.attr("type").map(str::to_string))
            .as_deref(),
        Some("result")
    );
    a.send("<message to='bob@localhost/phone' type='chat'><body>hello bob</body></message>")
        .await;
    let m = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m.attr("from"), Some("alice@localhost/home"));
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hello bob")
    );
    s.stop().await;
}

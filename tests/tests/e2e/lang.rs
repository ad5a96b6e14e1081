//! RFC 6120 §4.7.4: the stream's default language is applied to the stanzas a client sends
//! without an `xml:lang` of their own, when routed and when archived (XEP-0313).
use canto_proto::sasl::HashAlgo;
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const MAM: &str = "urn:xmpp:mam:2";

/// A stream header for `host` with `xml:lang='{lang}'`.
fn header_with_lang(host: &str, lang: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{host}' version='1.0' xml:lang='{lang}'>"
    )
}

/// Opens (or restarts) a stream whose header says `xml:lang='{lang}'` and reads the features.
async fn open_with_lang(c: &mut Client, lang: &str) {
    c.send_header(&header_with_lang(HOST, lang))
        .await
        .unwrap_or_else(|e| panic!("header: {e:#}"));
    let f = c.next().await.unwrap_or_else(|e| panic!("features: {e:#}"));
    assert!(f.is("features", ns::STREAMS), "expected features, got {f}");
}

/// [`TestServer::login`] with every stream header in `lang`.
async fn login_with_lang(s: &TestServer, user: &str, pass: &str, res: &str, lang: &str) -> Client {
    let mut c = s.connect().await;
    open_with_lang(&mut c, lang).await;
    c.starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    open_with_lang(&mut c, lang).await;
    c.auth_scram(HashAlgo::Sha256, user, pass, None)
        .await
        .unwrap_or_else(|e| panic!("auth: {e:#}"));
    open_with_lang(&mut c, lang).await;
    c.bind(Some(res))
        .await
        .unwrap_or_else(|e| panic!("bind: {e:#}"));
    c
}

fn body(m: &Element) -> String {
    m.get_child("body", ns::CLIENT)
        .map(|b| b.text())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_without_a_language_get_the_streams_when_routed_and_archived() {
    let mut cfg = test_config();
    cfg.modules.push("mam".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    let mut a = login_with_lang(&s, "alice", "pa", "a", "de").await;
    let mut b = s.login("bob", "pb", "b").await;
    a.send("<message to='bob@localhost/b' type='chat'><body>m0</body></message>")
        .await;
    a.send("<message to='bob@localhost/b' type='chat' xml:lang='fr'><body>m1</body></message>")
        .await;
    let is_msg = |e: &Element| e.name() == "message" && e.get_child("body", ns::CLIENT).is_some();
    let m0 = b.wait_for(is_msg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let m1 = b.wait_for(is_msg).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m0), "m0");
    // The stream's language, where the stanza had none.
    assert_eq!(m0.attr("xml:lang"), Some("de"), "{m0}");
    // A stanza's own language wins.
    assert_eq!(body(&m1), "m1");
    assert_eq!(m1.attr("xml:lang"), Some("fr"), "{m1}");
    // The archived copies (XEP-0313 §5.1.2: the message as it was routed).
    b.send("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
        .await;
    let mut langs = Vec::new();
    loop {
        let e = b.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.name() == "iq" && e.attr("id") == Some("q") {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            break;
        }
        if let Some(m) = e
            .get_child("result", MAM)
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", ns::CLIENT))
        {
            langs.push((body(m), m.attr("xml:lang").map(str::to_string)));
        }
    }
    assert_eq!(
        langs,
        vec![
            ("m0".to_string(), Some("de".to_string())),
            ("m1".to_string(), Some("fr".to_string())),
        ]
    );
    // A stream without a language adds none.
    b.send("<message to='alice@localhost/a' type='chat'><body>m2</body></message>")
        .await;
    let m2 = a.wait_for(is_msg).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(m2.attr("xml:lang"), None, "{m2}");
    s.stop().await;
}

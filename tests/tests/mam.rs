//! XEP-0313 Message Archive Management and XEP-0359 stanza ids, end to end.
use canto_stanza::ns;
use canto_tests::*;
use canto_xml::Element;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const SID: &str = "urn:xmpp:sid:0";

async fn server() -> TestServer {
    let mut cfg = test_config();
    cfg.modules.push("mam".into());
    let s = TestServer::with_config(cfg).await;
    s.add_user("alice", "pa").await;
    s.add_user("bob", "pb").await;
    s
}

/// Runs a query; returns (result ids in order, bodies, the <fin/>).
async fn query(c: &mut Client, inner: &str) -> (Vec<String>, Vec<String>, Element) {
    let id = c.id();
    c.send(&format!("<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='q-{id}'>{inner}</query></iq>"))
        .await;
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    loop {
        let e = c.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
            if e.attr("type") == Some("error") {
                return (ids, bodies, e);
            }
            let fin = e
                .get_child("fin", MAM)
                .cloned()
                .unwrap_or_else(|| panic!("no fin: {e}"));
            return (ids, bodies, fin);
        }
        if let Some(r) = e.get_child("result", MAM) {
            assert_eq!(r.attr("queryid"), Some(format!("q-{id}").as_str()));
            let m = r
                .get_child("forwarded", "urn:xmpp:forward:0")
                .and_then(|f| f.get_child("message", ns::CLIENT))
                .unwrap_or_else(|| panic!("no forwarded message: {e}"));
            ids.push(r.attr("id").unwrap_or_default().to_string());
            bodies.push(
                m.get_child("body", ns::CLIENT)
                    .map(|b| b.text())
                    .unwrap_or_default(),
            );
        }
    }
}

fn rsm(fin: &Element, name: &str) -> Option<String> {
    fin.get_child("set", RSM)?
        .get_child(name, RSM)
        .map(|e| e.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_stanza_ids_paging_and_filters() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    for i in 0..12 {
        a.send(&format!(
            "<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    // XEP-0359: the recipient's copy carries the id its archive gave it.
    let mut stanza_ids = Vec::new();
    for _ in 0..12 {
        let m = b
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let sid = m
            .get_child("stanza-id", SID)
            .unwrap_or_else(|| panic!("no stanza-id: {m}"));
        assert_eq!(sid.attr("by"), Some("bob@localhost"));
        stanza_ids.push(sid.attr("id").unwrap_or_default().to_string());
    }
    // Not archivable: headline, and a chat with no-store.
    a.send("<message to='bob@localhost/b' type='headline'><body>h</body></message>")
        .await;
    a.send("<message to='bob@localhost/b' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>")
        .await;
    // A forged stanza-id by bob's archive is removed (XEP-0359 §3.2).
    a.send("<message to='bob@localhost/b' type='chat'><body>f</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/></message>")
        .await;
    let f = b
        .wait_for(|e| {
            e.name() == "message"
                && e.get_child("body", ns::CLIENT)
                    .is_some_and(|x| x.text() == "f")
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        f.children()
            .filter(|c| c.is("stanza-id", SID))
            .all(|c| c.attr("id") != Some("forged")),
        "{f}"
    );

    // First page of 5 (XEP-0313 §4, XEP-0059 §2.1).
    let (ids, bodies, fin) = query(
        &mut b,
        "<set xmlns='http://jabber.org/protocol/rsm'><max>5</max></set>",
    )
    .await;
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(ids, stanza_ids[..5]);
    assert_eq!(rsm(&fin, "count").as_deref(), Some("13"));
    assert_eq!(fin.attr("complete"), None);
    // Next page after the last id.
    let last = rsm(&fin, "last").unwrap_or_default();
    let (_, bodies, _) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><max>5</max><after>{last}</after></set>"),
    )
    .await;
    assert_eq!(bodies, ["m5", "m6", "m7", "m8", "m9"]);
    // The last page (<before/>), then the page before it.
    let (_, bodies, fin) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><max>3</max><before/></set>"),
    )
    .await;
    assert_eq!(bodies, ["m10", "m11", "f"]);
    let first = rsm(&fin, "first").unwrap_or_default();
    let (_, bodies, _) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><max>3</max><before>{first}</before></set>"),
    )
    .await;
    assert_eq!(bodies, ["m7", "m8", "m9"]);
    // flip-page (§4.2).
    let (_, bodies, _) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><max>3</max></set><flip-page/>"),
    )
    .await;
    assert_eq!(bodies, ["m2", "m1", "m0"]);
    // Extended filters: ids and after-id / before-id.
    let form = |fields: &str| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
        )
    };
    let (_, bodies, _) = query(
        &mut b,
        &form(&format!(
            "<field var='ids'><value>{}</value><value>{}</value></field>",
            stanza_ids[3], stanza_ids[7]
        )),
    )
    .await;
    assert_eq!(bodies, ["m3", "m7"]);
    let (_, bodies, _) = query(
        &mut b,
        &form(&format!(
            "<field var='after-id'><value>{}</value></field><field var='before-id'><value>{}</value></field>",
            stanza_ids[2], stanza_ids[6]
        )),
    )
    .await;
    assert_eq!(bodies, ["m3", "m4", "m5"]);
    // with= filter: alice's archive has the same messages as sent.
    let (_, bodies, fin) = query(
        &mut a,
        &form("<field var='with'><value>bob@localhost</value></field>"),
    )
    .await;
    assert_eq!(bodies.len(), 13);
    assert_eq!(fin.attr("complete"), Some("true"));
    let (_, bodies, _) = query(
        &mut a,
        &form("<field var='with'><value>carol@localhost</value></field>"),
    )
    .await;
    assert!(bodies.is_empty());
    // Time filter in the future: nothing.
    let (_, bodies, _) = query(
        &mut b,
        &form("<field var='start'><value>2999-01-01T00:00:00Z</value></field>"),
    )
    .await;
    assert!(bodies.is_empty());
    // Errors: unknown after id → item-not-found; someone else's archive → forbidden.
    let (_, _, e) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><after>nope</after></set>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    let r = a
        .iq("<iq type='set' id='{id}' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_decide_what_is_archived() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    // XEP-0313 §6.1: bob archives nothing by default but always alice… then never alice.
    let r = b
        .iq("<iq type='set' id='{id}'><prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>alice@localhost</jid></always><never/></prefs></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"));
    let got = b
        .iq("<iq type='get' id='{id}'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        got.to_string().contains("default='never'") && got.to_string().contains("alice@localhost"),
        "{got}"
    );
    a.send("<message to='bob@localhost/b' type='chat'><body>kept</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.iq("<iq type='set' id='{id}'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>alice@localhost</jid></never></prefs></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<message to='bob@localhost/b' type='chat'><body>dropped</body></message>")
        .await;
    let m = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        m.get_child("stanza-id", SID).is_none(),
        "not archived, so no stanza-id: {m}"
    );
    let (_, bodies, _) = query(&mut b, "").await;
    assert_eq!(bodies, ["kept"]);
    // The query form and metadata (§5.1.1, §7.1).
    let form = b
        .iq("<iq type='get' id='{id}'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        form.to_string().contains("var='with'") && form.to_string().contains("var='ids'"),
        "{form}"
    );
    let meta = b
        .iq("<iq type='get' id='{id}'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        meta.get_child("metadata", MAM)
            .is_some_and(|m| m.has_child("start", MAM) && m.has_child("end", MAM)),
        "{meta}"
    );
    // disco#info on the account advertises MAM (§7).
    let info = b
        .iq("<iq type='get' id='{id}' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(info.to_string().contains("urn:xmpp:mam:2"), "{info}");
    s.stop().await;
}

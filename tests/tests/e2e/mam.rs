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

fn form(fields: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
    )
}

fn page(max: usize, extra: &str) -> String {
    format!("<set xmlns='{RSM}'><max>{max}</max>{extra}</set>")
}

/// alice sends bob `n` chat messages m0…m{n-1}; returns once bob has them all.
async fn send_many(a: &mut Client, b: &mut Client, n: usize) {
    for i in 0..n {
        a.send(&format!(
            "<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    let last = format!("m{}", n - 1);
    b.wait_for(|e| {
        e.name() == "message"
            && e.get_child("body", ns::CLIENT)
                .is_some_and(|x| x.text() == last)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_archive() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    // XEP-0313 §4.3: nothing to page through: complete, a count of 0, no first/last
    // (XEP-0059 §2.6).
    let (ids, _, fin) = query(&mut a, "").await;
    assert!(ids.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    assert_eq!(rsm(&fin, "count").as_deref(), Some("0"), "{fin}");
    assert!(
        rsm(&fin, "first").is_none() && rsm(&fin, "last").is_none(),
        "{fin}"
    );
    let (ids, _, fin) = query(&mut a, &page(5, "<before/>")).await;
    assert!(ids.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    // Metadata of an empty archive: an empty <metadata/>.
    let r = a
        .iq("<iq type='get' id='{id}'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let m = r
        .get_child("metadata", MAM)
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(m.children().count(), 0, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_to_both_ends_and_the_complete_flag() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    send_many(&mut a, &mut b, 7).await;

    // Forwards in pages of 3: only the last page is complete (XEP-0313 §4.3).
    let (ids0, bodies, fin) = query(&mut b, &page(3, "")).await;
    assert_eq!(bodies, names(0..3));
    assert_eq!(fin.attr("complete"), None, "{fin}");
    assert_eq!(rsm(&fin, "first").as_deref(), Some(ids0[0].as_str()));
    assert_eq!(rsm(&fin, "last").as_deref(), Some(ids0[2].as_str()));
    let last = rsm(&fin, "last").unwrap_or_default();
    let (_, bodies, fin) = query(&mut b, &page(3, &format!("<after>{last}</after>"))).await;
    assert_eq!(bodies, names(3..6));
    assert_eq!(fin.attr("complete"), None, "{fin}");
    let last = rsm(&fin, "last").unwrap_or_default();
    let (ids, bodies, fin) = query(&mut b, &page(3, &format!("<after>{last}</after>"))).await;
    assert_eq!(bodies, names(6..7));
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    assert_eq!(rsm(&fin, "count").as_deref(), Some("7"), "{fin}");
    // After the very last item: an empty, complete page.
    let (_, bodies, fin) = query(&mut b, &page(3, &format!("<after>{}</after>", ids[0]))).await;
    assert!(bodies.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    assert!(rsm(&fin, "first").is_none(), "{fin}");

    // Backwards from the end (<before/>): pages stay in chronological order inside, and the
    // page that reaches the start is the complete one.
    let (_, bodies, fin) = query(&mut b, &page(3, "<before/>")).await;
    assert_eq!(bodies, names(4..7));
    assert_eq!(fin.attr("complete"), None, "{fin}");
    let first = rsm(&fin, "first").unwrap_or_default();
    let (_, bodies, fin) = query(&mut b, &page(3, &format!("<before>{first}</before>"))).await;
    assert_eq!(bodies, names(1..4));
    assert_eq!(fin.attr("complete"), None, "{fin}");
    let first = rsm(&fin, "first").unwrap_or_default();
    let (_, bodies, fin) = query(&mut b, &page(3, &format!("<before>{first}</before>"))).await;
    assert_eq!(bodies, names(0..1));
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    let (_, bodies, fin) = query(&mut b, &page(3, &format!("<before>{}</before>", ids0[0]))).await;
    assert!(bodies.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");

    // Flipped pages (§4.3 "Flipped pages"): same items, newest first; the RSM ids still page
    // on without gaps or overlaps.
    let (_, bodies, fin) = query(
        &mut b,
        &format!(
            "{}<flip-page/>",
            page(3, &format!("<after>{}</after>", ids0[2]))
        ),
    )
    .await;
    assert_eq!(bodies, ["m5", "m4", "m3"]);
    let last = rsm(&fin, "last").unwrap_or_default();
    let (_, bodies, _) = query(&mut b, &page(3, &format!("<after>{last}</after>"))).await;
    assert_eq!(bodies, names(6..7));
    let (_, bodies, fin) = query(&mut b, &format!("{}<flip-page/>", page(3, "<before/>"))).await;
    assert_eq!(bodies, ["m6", "m5", "m4"]);
    let first = rsm(&fin, "first").unwrap_or_default();
    let (_, bodies, _) = query(&mut b, &page(3, &format!("<before>{first}</before>"))).await;
    assert_eq!(bodies, names(1..4));

    // XEP-0059 §2.7: max 0 asks for the count alone; the results are limited, so not complete.
    let (ids, _, fin) = query(&mut b, &page(0, "")).await;
    assert!(ids.is_empty());
    assert_eq!(rsm(&fin, "count").as_deref(), Some("7"), "{fin}");
    assert_ne!(fin.attr("complete"), Some("true"), "{fin}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_caps_the_page_size() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    send_many(&mut a, &mut b, 260).await;
    // XEP-0313 §4.3 "Page limits": a server may return fewer than asked, and then says so.
    let (ids, bodies, fin) = query(&mut b, &page(1000, "")).await;
    assert_eq!(bodies, names(0..250));
    assert_eq!(fin.attr("complete"), None, "{fin}");
    assert_eq!(rsm(&fin, "count").as_deref(), Some("260"), "{fin}");
    let (_, bodies, fin) =
        query(&mut b, &page(1000, &format!("<after>{}</after>", ids[249]))).await;
    assert_eq!(bodies, names(250..260));
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    // Without <set/> the default page is smaller still, and says it is incomplete.
    let (_, bodies, fin) = query(&mut b, "").await;
    assert!(!bodies.is_empty() && bodies.len() < 260, "{}", bodies.len());
    assert_eq!(fin.attr("complete"), None, "{fin}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_the_xep_errors() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    send_many(&mut a, &mut b, 2).await;
    let (ids, _, _) = query(&mut b, "").await;
    assert_eq!(ids.len(), 2);
    let cases: Vec<(String, &str)> = vec![
        // XEP-0313 §4.1: ids, before-id and after-id must all exist: item-not-found.
        (
            form(&format!(
                "<field var='ids'><value>{}</value><value>no-such-id</value></field>",
                ids[0]
            )),
            "item-not-found",
        ),
        (
            form("<field var='before-id'><value>no-such-id</value></field>"),
            "item-not-found",
        ),
        (page(5, "<before>no-such-id</before>"), "item-not-found"),
        // A field the server does not know: feature-not-implemented.
        (
            form("<field var='include-groupchat'><value>true</value></field>"),
            "feature-not-implemented",
        ),
        // Values that do not parse.
        (
            form("<field var='start'><value>yesterday</value></field>"),
            "bad-request",
        ),
        (
            form("<field var='end'><value>2024-13-01T00:00:00Z</value></field>"),
            "bad-request",
        ),
        (page(0, "").replace("<max>0</max>", "<max>ten</max>"), "bad-request"),
        (page(0, "").replace("<max>0</max>", "<max>-1</max>"), "bad-request"),
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:1</value></field></x>".to_string(),
            "bad-request",
        ),
    ];
    for (inner, want) in cases {
        let (got, _, e) = query(&mut b, &inner).await;
        assert!(got.is_empty(), "{inner}: results before an error");
        assert_eq!(error_condition(&e).as_deref(), Some(want), "{inner}: {e}");
    }
    // The form advertises the open list of ids (§4.1 "Retrieving form fields", XEP-0122).
    let r = b
        .iq("<iq type='get' id='{id}'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let x = r
        .get_child("query", MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .unwrap_or_else(|| panic!("{r}"));
    let ids_field = x
        .children()
        .find(|f| f.attr("var") == Some("ids"))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        ids_field
            .get_child("validate", "http://jabber.org/protocol/xdata-validate")
            .is_some_and(|v| v.has_child("open", "http://jabber.org/protocol/xdata-validate")),
        "{r}"
    );
    assert!(
        !x.children()
            .any(|f| f.has_child("required", "jabber:x:data")),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_jid_filters() {
    let s = server().await;
    s.add_user("carol", "pc").await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    let mut c = s.login("carol", "pc", "c").await;
    send_many(&mut a, &mut b, 3).await;
    c.send("<message to='bob@localhost/b' type='chat'><body>from carol</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message" && e.to_string().contains("from carol"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The delay stamp of the first result: every message is at or after it.
    let id = b.id();
    b.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2'>{}</query></iq>",
        page(1, "")
    ))
    .await;
    let first = b
        .wait_for(|e| e.has_child("result", MAM))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let stamp = first
        .get_child("result", MAM)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("delay", ns::DELAY))
        .and_then(|d| d.attr("stamp"))
        .unwrap_or_else(|| panic!("no delay stamp: {first}"))
        .to_string();
    b.wait_for(|e| e.attr("id") == Some(id.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let all = ["m0", "m1", "m2", "from carol"];
    // XEP-0313 §4.1 "Filtering by time received": start and end are inclusive.
    for (fields, want) in [
        (
            format!("<field var='start'><value>{stamp}</value></field>"),
            &all[..],
        ),
        (
            "<field var='end'><value>2000-01-01T00:00:00Z</value></field>".to_string(),
            &[][..],
        ),
        // Another offset, the same instant as 1999-12-31T23:00:00Z: everything is after it.
        (
            "<field var='start'><value>2000-01-01T01:00:00+02:00</value></field><field var='end'><value>2999-01-01T00:00:00.000Z</value></field>".to_string(),
            &all[..],
        ),
        // start after end matches nothing.
        (
            "<field var='start'><value>2999-01-01T00:00:00Z</value></field><field var='end'><value>2000-01-01T00:00:00Z</value></field>".to_string(),
            &[][..],
        ),
        // "with" a bare JID covers every resource of the contact; combined with a time.
        (
            format!("<field var='with'><value>carol@localhost</value></field><field var='start'><value>{stamp}</value></field>"),
            &["from carol"][..],
        ),
        (
            "<field var='with'><value>alice@localhost</value></field>".to_string(),
            &["m0", "m1", "m2"][..],
        ),
    ] {
        let (_, bodies, fin) = query(&mut b, &form(&fields)).await;
        assert_eq!(bodies, want, "{fields}");
        assert_eq!(fin.attr("complete"), Some("true"), "{fields}: {fin}");
        assert_eq!(
            rsm(&fin, "count").as_deref(),
            Some(want.len().to_string().as_str()),
            "{fields}: {fin}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_preference_and_the_senders_own_preferences() {
    let s = server().await;
    s.add_user("carol", "pc").await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    let mut c = s.login("carol", "pc", "c").await;
    // XEP-0313 §6.1: without stored preferences, everything is archived.
    let r = b
        .iq("<iq type='get' id='{id}'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p = r.get_child("prefs", MAM).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(p.attr("default"), Some("always"), "{r}");
    // An unknown default is refused and changes nothing.
    let r = b
        .iq("<iq type='set' id='{id}'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    // bob archives only contacts in his roster: alice is, carol is not.
    b.iq("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='alice@localhost'/></query></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let r = b
        .iq("<iq type='set' id='{id}'><prefs xmlns='urn:xmpp:mam:2' default='roster'><always/><never/></prefs></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(
        r.get_child("prefs", MAM).and_then(|p| p.attr("default")),
        Some("roster"),
        "{r}"
    );
    // alice, for her part, never archives bob.
    a.iq("<iq type='set' id='{id}'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>bob@localhost</jid></never></prefs></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a.send("<message to='bob@localhost/b' type='chat'><body>from alice</body></message>")
        .await;
    c.send("<message to='bob@localhost/b' type='chat'><body>from carol</body></message>")
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = b
            .wait_for(|e| e.name() == "message")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        got.push(m);
    }
    for m in &got {
        let from_alice = m.attr("from") == Some("alice@localhost/a");
        // Only what is archived carries a stanza-id (XEP-0359 §3.1).
        assert_eq!(m.get_child("stanza-id", SID).is_some(), from_alice, "{m}");
    }
    let (_, bodies, _) = query(&mut b, "").await;
    assert_eq!(bodies, ["from alice"]);
    // The sender's archive follows the sender's preferences: alice keeps nothing, carol (no
    // preferences) keeps her message.
    let (_, bodies, _) = query(&mut a, "").await;
    assert!(bodies.is_empty(), "{bodies:?}");
    let (_, bodies, _) = query(&mut c, "").await;
    assert_eq!(bodies, ["from carol"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_archived_once_and_copies_carry_only_own_ids() {
    let s = server().await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut b = s.login("bob", "pb", "b").await;
    for c in [&mut a1, &mut a2] {
        c.send("<presence/>").await;
        c.iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    a1.drain().await;
    a2.drain().await;
    // bob → alice's bare JID: both resources get it (chat to all of the highest priority);
    // XEP-0313 §5.1.1: stored once.
    b.send("<message to='alice@localhost' type='chat'><body>fork</body></message>")
        .await;
    let m1 = a1
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let m2 = a2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let sid = |m: &Element| {
        m.get_child("stanza-id", SID)
            .and_then(|s| s.attr("id"))
            .map(str::to_string)
    };
    assert!(sid(&m1).is_some(), "{m1}");
    assert_eq!(sid(&m1), sid(&m2));
    let (ids, bodies, _) = query(&mut a1, "").await;
    assert_eq!(bodies, ["fork"]);
    assert_eq!(Some(&ids[0]), sid(&m1).as_ref());
    // bob → a1: a2's <received/> copy keeps alice's archive id (§3: SHOULD).
    b.send("<message to='alice@localhost/a1' type='chat'><body>direct</body></message>")
        .await;
    let c = a2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let inner = c
        .get_child("received", "urn:xmpp:carbons:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", ns::CLIENT))
        .unwrap_or_else(|| panic!("{c}"));
    assert_eq!(
        inner.get_child("stanza-id", SID).and_then(|s| s.attr("by")),
        Some("alice@localhost"),
        "{c}"
    );
    // a1 → bob: bob's copy has bob's archive id; a2's <sent/> copy must not carry it (§3:
    // no stanza-id of an archive the addressee may not access), and alice's archive holds the
    // message once.
    a1.send("<message to='bob@localhost/b' type='chat'><body>reply</body></message>")
        .await;
    let m = b
        .wait_for(|e| e.name() == "message" && e.to_string().contains("reply"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        m.get_child("stanza-id", SID).and_then(|s| s.attr("by")),
        Some("bob@localhost"),
        "{m}"
    );
    let c = a2
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(c.has_child("sent", "urn:xmpp:carbons:2"), "{c}");
    assert!(
        !c.to_string().contains("by='bob@localhost'"),
        "bob's archive id leaked to alice: {c}"
    );
    let (_, bodies, _) = query(&mut a2, "").await;
    assert_eq!(bodies, ["fork", "direct", "reply"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_messages_are_not_archived() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    a.iq("<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // XEP-0313 §5.1: a message the user's server rejects is in neither archive.
    b.send("<message to='alice@localhost/a' type='chat' id='x'><body>blocked</body></message>")
        .await;
    let e = b
        .wait_for(|e| e.attr("id") == Some("x"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(error_type(&e).as_deref(), Some("cancel"), "{e}");
    let (_, bodies, _) = query(&mut a, "").await;
    assert!(bodies.is_empty(), "{bodies:?}");
    let (_, bodies, _) = query(&mut b, "").await;
    assert!(bodies.is_empty(), "{bodies:?}");
    s.stop().await;
}

/// The stamps of results keep the stored milliseconds (XEP-0082 §3.2 `.sss`), so a stamp handed
/// back as `end` or `start` (XEP-0313 §4.1.4, both inclusive) takes in the very message it came
/// from — with whole seconds, `end` fell before a message stamped 12:00:00.123.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stamp_handed_back_as_end_or_start_includes_that_message() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    send_many(&mut a, &mut b, 3).await;
    // alice's archive, with each result's stamp.
    let id = a.id();
    a.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}'/></iq>"
    ))
    .await;
    let mut stamps = Vec::new();
    loop {
        let e = a.next().await.unwrap_or_else(|e| panic!("{e:#}"));
        if e.attr("id") == Some(id.as_str()) {
            break;
        }
        let Some(f) = e
            .get_child("result", MAM)
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        else {
            continue;
        };
        let body = f
            .get_child("message", ns::CLIENT)
            .and_then(|m| m.get_child("body", ns::CLIENT))
            .map(|b| b.text())
            .unwrap_or_default();
        let stamp = f
            .get_child("delay", ns::DELAY)
            .and_then(|d| d.attr("stamp"))
            .unwrap_or_else(|| panic!("no stamp: {e}"))
            .to_string();
        stamps.push((body, stamp));
    }
    assert_eq!(
        stamps.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    let s1 = &stamps[1].1;
    // `…:ss.sssZ`, or `…:ssZ` exactly on a second.
    let frac = s1
        .strip_suffix('Z')
        .and_then(|t| t.rsplit_once('.'))
        .map(|(_, f)| f.to_string());
    assert!(
        frac.as_ref()
            .is_none_or(|f| f.len() == 3 && f.bytes().all(|c| c.is_ascii_digit())),
        "{s1}"
    );
    for (field, must) in [("end", ["m0", "m1"]), ("start", ["m1", "m2"])] {
        let (_, bodies, fin) = query(
            &mut a,
            &form(&format!("<field var='{field}'><value>{s1}</value></field>")),
        )
        .await;
        assert_eq!(fin.name(), "fin", "{fin}");
        for m in must {
            assert!(bodies.iter().any(|b| b == m), "{field}={s1}: {bodies:?}");
        }
    }
    s.stop().await;
}

/// XEP-0313 §3 / XEP-0359 §3: the `<sent/>` carbon of a message carries the id the sender's
/// archive gave it, the recipient's copy the id of the recipient's archive, neither the other's,
/// and ids a client made up for either archive are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_carbons_carry_the_senders_archive_id_and_the_recipient_gets_only_its_own() {
    let s = server().await;
    let mut a1 = s.login("alice", "pa", "a1").await;
    let mut a2 = s.login("alice", "pa", "a2").await;
    let mut b = s.login("bob", "pb", "b").await;
    a2.iq("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    a1.send(&format!(
        "<message to='bob@localhost/b' type='chat'><body>hello</body>\
         <stanza-id xmlns='{SID}' by='alice@localhost' id='forged-a'/>\
         <stanza-id xmlns='{SID}' by='bob@localhost' id='forged-b'/></message>"
    ))
    .await;
    let ids = |m: &Element| -> Vec<(String, String)> {
        m.children()
            .filter(|c| c.is("stanza-id", SID))
            .map(|c| {
                (
                    c.attr("by").unwrap_or_default().to_string(),
                    c.attr("id").unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let got = b
        .wait_for(|e| e.name() == "message" && e.has_child("body", ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let bob_ids = ids(&got);
    assert_eq!(bob_ids.len(), 1, "{got}");
    assert_eq!(bob_ids[0].0, "bob@localhost", "{got}");
    assert_ne!(bob_ids[0].1, "forged-b");
    let carbon = a2
        .wait_for(|e| e.has_child("sent", "urn:xmpp:carbons:2"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let copy = carbon
        .get_child("sent", "urn:xmpp:carbons:2")
        .and_then(|x| x.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", ns::CLIENT))
        .unwrap_or_else(|| panic!("{carbon}"));
    let alice_ids = ids(copy);
    assert_eq!(alice_ids.len(), 1, "{carbon}");
    assert_eq!(alice_ids[0].0, "alice@localhost", "{carbon}");
    assert_ne!(alice_ids[0].1, "forged-a");
    // Each id is the one that archive lists the message under.
    let (a_ids, a_bodies, _) = query(&mut a1, "").await;
    assert_eq!(a_bodies, ["hello"]);
    assert_eq!(a_ids, [alice_ids[0].1.clone()]);
    let (b_ids, _, _) = query(&mut b, "").await;
    assert_eq!(b_ids, [bob_ids[0].1.clone()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_jid_in_with_matches_that_resource_only() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b1 = s.login("bob", "pb", "b1").await;
    let mut b2 = s.login("bob", "pb", "b2").await;
    // Interleaved: b1 and b2 write to alice, alice answers b2.
    for i in 0..3 {
        b1.send(&format!(
            "<message to='alice@localhost/a' type='chat'><body>b1-{i}</body></message>"
        ))
        .await;
        b2.send(&format!(
            "<message to='alice@localhost/a' type='chat'><body>b2-{i}</body></message>"
        ))
        .await;
        assert_alive(&mut b1).await;
        assert_alive(&mut b2).await;
        a.send(&format!(
            "<message to='bob@localhost/b2' type='chat'><body>a-{i}</body></message>"
        ))
        .await;
        assert_alive(&mut a).await;
    }
    let with = |j: &str| form(&format!("<field var='with'><value>{j}</value></field>"));
    // XEP-0313 §4.1.1: a full JID matches that resource only — both directions.
    let (_, bodies, fin) = query(&mut a, &with("bob@localhost/b1")).await;
    assert_eq!(bodies, ["b1-0", "b1-1", "b1-2"], "{fin}");
    assert_eq!(fin.attr("complete"), Some("true"));
    let (_, bodies, _) = query(&mut a, &with("bob@localhost/b2")).await;
    assert_eq!(bodies, ["b2-0", "a-0", "b2-1", "a-1", "b2-2", "a-2"]);
    // The bare JID still matches all of them.
    let (_, bodies, fin) = query(&mut a, &with("bob@localhost")).await;
    assert_eq!(bodies.len(), 9, "{bodies:?}");
    assert_eq!(rsm(&fin, "count").as_deref(), Some("9"));
    // Paging over the filtered results: pages of two, forwards then backwards.
    let (ids, bodies, fin) = query(
        &mut a,
        &format!("{}{}", with("bob@localhost/b1"), page(2, "")),
    )
    .await;
    assert_eq!(bodies, ["b1-0", "b1-1"]);
    assert_eq!(fin.attr("complete"), None, "{fin}");
    let last = ids.last().cloned().unwrap_or_default();
    let (_, bodies, fin) = query(
        &mut a,
        &format!(
            "{}{}",
            with("bob@localhost/b1"),
            page(2, &format!("<after>{last}</after>"))
        ),
    )
    .await;
    assert_eq!(bodies, ["b1-2"]);
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    let (_, bodies, _) = query(
        &mut a,
        &format!("{}{}", with("bob@localhost/b1"), page(2, "<before/>")),
    )
    .await;
    assert_eq!(bodies, ["b1-1", "b1-2"]);
    // A resource nobody used: nothing, complete.
    let (_, bodies, fin) = query(&mut a, &with("bob@localhost/nobody")).await;
    assert!(bodies.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_the_retention_period_expire() {
    let storage = canto_storage::Storage::memory();
    let now = canto_stanza::datetime::now_millis();
    let day = 86_400_000;
    let msg = |body: &str| {
        format!(
            "<message xmlns='jabber:client' from='bob@localhost/b' to='alice@localhost/a' type='chat'><body>{body}</body></message>"
        )
    };
    for (stamp, body) in [(now - 3 * day, "old"), (now - day / 2, "recent")] {
        storage
            .archive
            .append(
                "archive",
                HOST,
                "alice",
                "bob@localhost",
                stamp,
                msg(body).as_bytes(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut cfg = test_config();
    cfg.modules.push("mam".into());
    cfg.set_section("mam", "retention_days = 2")
        .unwrap_or_else(|e| panic!("{e}"));
    // XEP-0313 leaves retention to the server: expiry runs at startup and hourly.
    let s = TestServer::with_storage(cfg, storage.clone()).await;
    let count = || async {
        storage
            .archive
            .count("archive", HOST, "alice", &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count().await, 1, "the three-day-old message did not expire");
    s.add_user("alice", "pa").await;
    let mut a = s.login("alice", "pa", "a").await;
    let (_, bodies, _) = query(&mut a, "").await;
    assert_eq!(bodies, ["recent"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_are_bad_request_not_a_crash() {
    let s = server().await;
    let mut a = s.login("alice", "pa", "a").await;
    let mut b = s.login("bob", "pb", "b").await;
    send_many(&mut a, &mut b, 2).await;
    let huge = "99999999999999999999999999";
    let cases: Vec<(String, &str)> = vec![
        // XEP-0082 years have four digits; this one overflowed the millisecond arithmetic.
        (
            form("<field var='start'><value>99999999999-01-01T00:00:00Z</value></field>"),
            "bad-request",
        ),
        (
            form("<field var='end'><value>2024-01-01T00:00:00+99999999999:00</value></field>"),
            "bad-request",
        ),
        // XEP-0059: a max or index beyond any integer is no valid value.
        (
            format!("<set xmlns='{RSM}'><max>{huge}</max></set>"),
            "bad-request",
        ),
        (
            format!("<set xmlns='{RSM}'><index>{huge}</index></set>"),
            "bad-request",
        ),
        (page(1, "<index>-1</index>"), "bad-request"),
        // XEP-0059 §2.6: a page out of order, which keyset paging does not serve.
        (page(1, "<index>1</index>"), "feature-not-implemented"),
    ];
    for (inner, want) in cases {
        let (got, _, e) = query(&mut b, &inner).await;
        assert!(got.is_empty(), "{inner}: results before an error");
        assert_eq!(error_condition(&e).as_deref(), Some(want), "{inner}: {e}");
    }
    // Index 0 is the first page; a max of any size is served up to the server's page cap.
    let (got, _, _) = query(&mut b, &page(1, "<index>0</index>")).await;
    assert_eq!(got.len(), 1);
    let (got, _, _) = query(
        &mut b,
        &format!("<set xmlns='{RSM}'><max>4294967296</max></set>"),
    )
    .await;
    assert_eq!(got.len(), 2);
    s.stop().await;
}

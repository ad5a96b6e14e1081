//! The MUC service's wiring end to end, in one flow: a room created, configured, joined by
//! two users, a message broadcast, a private message, leaving. The subjects in depth are in
//! muc.rs and muc_admin.rs.

use canto_tests::*;

const ROOM: &str = "coven@conference.localhost";

async fn online(s: &TestServer, user: &str) -> Client {
    let mut c = s.login(user, "pw", "r").await;
    c.send("<presence/>").await;
    let _ = c.drain().await;
    c
}

fn statuses(p: &canto_xml::Element) -> Vec<String> {
    p.get_child("x", "http://jabber.org/protocol/muc#user")
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_room_is_created_joined_and_talked_in() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = online(&s, "alice").await;
    let mut b = online(&s, "bob").await;
    // XEP-0045 §10.1.1: the creator's self-presence has 110 and 201.
    a.send(&format!(
        "<presence to='{ROOM}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let p = a
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Alice")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = statuses(&p);
    assert!(
        st.contains(&"110".into()) && st.contains(&"201".into()),
        "{p}"
    );
    // Locked: bob may not enter yet (§10.1.1).
    b.send(&format!("<presence to='{ROOM}/Bob'/>")).await;
    let e = b
        .wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("item-not-found"),
        "{e}"
    );
    // §10.1.2: the instant room.
    let r = a
        .iq(&format!(
            "<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let _ = a.drain().await;
    b.send(&format!("<presence to='{ROOM}/Bob'/>")).await;
    let own = b
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Bob")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(statuses(&own).contains(&"110".into()), "{own}");
    let subject = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        subject.get_child("subject", "jabber:client").is_some(),
        "{subject}"
    );
    // Alice sees Bob arrive.
    let seen = a
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Bob")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(seen.attr("type").is_none(), "{seen}");
    // §7.4: a message is reflected to everyone, the sender too.
    b.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='m1'><body>hail</body></message>"
    ))
    .await;
    for c in [&mut a, &mut b] {
        let m = c
            .wait_for(|e| e.name() == "message" && e.get_child("body", "jabber:client").is_some())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.attr("from"), Some(format!("{ROOM}/Bob").as_str()), "{m}");
        assert!(m.get_child("stanza-id", "urn:xmpp:sid:0").is_some(), "{m}");
    }
    // §7.5: a private message carries the muc#user marker.
    a.send(&format!(
        "<message to='{ROOM}/Bob' type='chat'><body>psst</body></message>"
    ))
    .await;
    let pm = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pm.attr("from"),
        Some(format!("{ROOM}/Alice").as_str()),
        "{pm}"
    );
    assert!(
        pm.get_child("x", "http://jabber.org/protocol/muc#user")
            .is_some(),
        "{pm}"
    );
    // §7.14: leaving.
    b.send(&format!("<presence to='{ROOM}/Bob' type='unavailable'/>"))
        .await;
    let gone = a
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        gone.attr("from"),
        Some(format!("{ROOM}/Bob").as_str()),
        "{gone}"
    );
}

#[tokio::test]
async fn joining_a_room_bigger_than_the_send_queue_is_no_slow_reader() {
    // A joiner gets every occupant's presence at once (XEP-0045 §7.2.3): with more occupants
    // than c2s.max_send_queue that burst must not close the session as a slow reader (it
    // did, for the 1000th joiner at the defaults).
    let mut config = test_config();
    config.c2s.max_send_queue = 8;
    let s = TestServer::with_config(config).await;
    let n = 12;
    for i in 0..n {
        s.add_user(&format!("u{i}"), "pw").await;
    }
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = online(&s, &format!("u{i}")).await;
        c.send(&format!("<presence to='{ROOM}/n{i}'/>")).await;
        let own = c
            .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/n{i}")))
            .await
            .unwrap_or_else(|e| panic!("joiner {i}: {e}"));
        assert!(statuses(&own).contains(&"110".into()), "{own}");
        if i == 0 {
            let r = c
                .iq(&format!(
                    "<iq type='set' id='{{id}}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
                     <x xmlns='jabber:x:data' type='submit'/></query></iq>"
                ))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.attr("type"), Some("result"), "{r}");
        }
        let _ = c.drain().await;
        clients.push(c);
    }
    // The last joiner got the room and is still connected: a message reaches it.
    clients[0]
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><body>all here</body></message>"
        ))
        .await;
    let last = clients.last_mut().unwrap_or_else(|| panic!("no clients"));
    let m = last
        .wait_for(|e| e.name() == "message" && e.get_child("body", "jabber:client").is_some())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.attr("from"), Some(format!("{ROOM}/n0").as_str()), "{m}");
}

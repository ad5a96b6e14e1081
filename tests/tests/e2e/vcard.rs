//! XEP-0054 vcard-temp end to end: publishing one's own vCard, reading it from other accounts
//! and resources, and the errors the XEP lists.
use canto_tests::*;
use canto_xml::Element;

const VCARD: &str = "vcard-temp";

async fn server() -> TestServer {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    s
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

fn get_to(to: &str) -> String {
    format!("<iq type='get' id='{{id}}' to='{to}'><vCard xmlns='{VCARD}'/></iq>")
}

fn card_of(r: &Element) -> &Element {
    r.get_child("vCard", VCARD)
        .unwrap_or_else(|| panic!("no vCard in {r}"))
}

fn field(r: &Element, name: &str) -> Option<String> {
    card_of(r).get_child(name, VCARD).map(|e| e.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_vcard_is_published_and_read_by_everyone() {
    let s = server().await;
    let mut a1 = s.login("alice", "pw", "a1").await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    let mut b = s.login("bob", "pw", "b1").await;

    // XEP-0054 §3.1: without a vCard the owner gets an empty one.
    let r = ask(
        &mut a1,
        "<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(card_of(&r).children().count(), 0, "{r}");

    // §3.2: publish (no `to`); markup-significant characters survive storage.
    let r = ask(
        &mut a1,
        "<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><FN>Alice &amp; &lt;Co&gt;</FN><NICKNAME>al</NICKNAME><PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Read back by the other resource, with and without `to`.
    for xml in [
        "<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>".to_string(),
        get_to("alice@localhost"),
    ] {
        let r = ask(&mut a2, &xml).await;
        assert_eq!(field(&r, "FN").as_deref(), Some("Alice & <Co>"), "{r}");
        assert_eq!(field(&r, "NICKNAME").as_deref(), Some("al"), "{r}");
        let photo = card_of(&r)
            .get_child("PHOTO", VCARD)
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(
            photo
                .get_child("BINVAL", VCARD)
                .map(|b| b.text())
                .as_deref(),
            Some("iVBORw0KGgo=")
        );
    }
    // §3.3: another user reads it from the bare JID; the server answers for alice.
    let r = ask(&mut b, &get_to("alice@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("alice@localhost"), "{r}");
    assert_eq!(field(&r, "FN").as_deref(), Some("Alice & <Co>"), "{r}");
    assert!(a1.quiet().await, "the query reached alice's client");

    // §3.2: no partial updates: a new vCard replaces the whole old one.
    let r = ask(
        &mut a2,
        "<iq type='set' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = ask(&mut b, &get_to("alice@localhost")).await;
    assert_eq!(field(&r, "FN").as_deref(), Some("Alice"), "{r}");
    assert!(card_of(&r).get_child("PHOTO", VCARD).is_none(), "{r}");
    assert!(card_of(&r).get_child("NICKNAME", VCARD).is_none(), "{r}");

    // It outlives the sessions.
    drop(a1);
    drop(a2);
    let mut again = s.login("alice", "pw", "later").await;
    let r = ask(
        &mut again,
        "<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(field(&r, "FN").as_deref(), Some("Alice"), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_the_xep_lists() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "a1").await;
    let mut b = s.login("bob", "pw", "b1").await;
    let r = ask(
        &mut a,
        "<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // XEP-0054 §3.2: setting another user's vCard is forbidden, and changes nothing.
    let r = ask(
        &mut b,
        "<iq type='set' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    let r = ask(&mut b, &get_to("alice@localhost")).await;
    assert_eq!(field(&r, "FN").as_deref(), Some("Alice"), "{r}");

    // §3.3: another user with no vCard and no such user: a stanza error, the same in both cases
    // so that accounts cannot be discovered this way.
    let none = ask(&mut b, &get_to("carol@localhost")).await;
    let missing = ask(&mut b, &get_to("nobody@localhost")).await;
    assert_eq!(
        error_condition(&none).as_deref(),
        Some("service-unavailable"),
        "{none}"
    );
    assert_eq!(
        error_condition(&none),
        error_condition(&missing),
        "{missing}"
    );
    assert_eq!(error_type(&none), error_type(&missing));

    // Oversize (the module keeps at most 64 KiB; this stanza is well under the stream limit):
    // refused with not-acceptable, the old vCard stays.
    let big = "A".repeat(70 * 1024);
    let r = ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><vCard xmlns='vcard-temp'><FN>Big</FN><PHOTO><BINVAL>{big}</BINVAL></PHOTO></vCard></iq>"
        ),
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-acceptable"),
        "{r}"
    );
    let r = ask(&mut b, &get_to("alice@localhost")).await;
    assert_eq!(field(&r, "FN").as_deref(), Some("Alice"), "{r}");
    // The session is unharmed.
    assert_alive(&mut a).await;

    // A payload other than <vCard/> in the namespace is not understood (RFC 6120 §8.4).
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}'><card xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    s.stop().await;
}

/// XEP-0153 §4: the avatar hash a client puts in its presence reaches its contacts and its
/// other resources untouched (also the empty `<photo/>` of §4.2), and the vCard it points at
/// can be fetched; a presence without one gets the hash of the stored photo from the server
/// (XEP-0398 §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatar_hashes_in_presence_reach_contacts_with_the_vcard_behind_them() {
    const UPDATE: &str = "vcard-temp:x:update";
    let photo_of = |e: &Element| {
        e.get_child("x", UPDATE)
            .and_then(|x| x.get_child("photo", UPDATE))
            .map(|p| p.text())
    };
    let s = server().await;
    let mut a1 = s.login("alice", "pw", "a1").await;
    let mut a2 = s.login("alice", "pw", "a2").await;
    let mut b = s.login("bob", "pw", "b1").await;
    a1.send("<presence/>").await;
    a2.send("<presence/>").await;
    b.send("<presence/>").await;
    // bob subscribes to alice, alice approves.
    subscribe_to(&mut b, &mut a1).await;

    let r = ask(
        &mut a1,
        "<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let hash = "01b3a4b3c0a1a5bbbab3f6f03a6e8d3a0c0bb4b2";
    a1.send(&format!(
        "<presence><x xmlns='{UPDATE}'><photo>{hash}</photo></x></presence>"
    ))
    .await;
    for c in [&mut b, &mut a2] {
        let p = c
            .wait_for(|e| {
                e.name() == "presence" && e.attr("from") == Some("alice@localhost/a1") && {
                    e.get_child("x", UPDATE).is_some()
                }
            })
            .await
            .unwrap_or_else(|e| panic!("no avatar presence: {e:#}"));
        assert_eq!(photo_of(&p).as_deref(), Some(hash), "{p}");
    }
    let r = ask(&mut b, &get_to("alice@localhost")).await;
    let binval = card_of(&r)
        .get_child("PHOTO", VCARD)
        .and_then(|p| p.get_child("BINVAL", VCARD))
        .map(|b| b.text());
    assert_eq!(binval.as_deref(), Some("iVBORw0KGgo="), "{r}");

    // §4.2: an empty <photo/> ("not ready to advertise") passes through empty.
    a1.send(&format!(
        "<presence><x xmlns='{UPDATE}'><photo/></x></presence>"
    ))
    .await;
    let p = b
        .wait_for(|e| e.name() == "presence" && e.get_child("x", UPDATE).is_some())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(photo_of(&p).as_deref(), Some(""), "{p}");
    // XEP-0398 §4: a presence without the element gets the hash of the stored photo: the
    // SHA-1 of the decoded image, lower-case hex (XEP-0153 §4.3).
    use base64::Engine as _;
    use sha1::Digest as _;
    let image = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgo=")
        .unwrap_or_default();
    let expected: String = sha1::Sha1::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    a1.send("<presence><show>away</show></presence>").await;
    let p = b
        .wait_for(|e| e.name() == "presence" && e.get_child("show", "jabber:client").is_some())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(photo_of(&p).as_deref(), Some(expected.as_str()), "{p}");
    s.stop().await;
}

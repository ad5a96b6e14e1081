//! XEP-0402 bookmarks and their XEP-0048 forms (module `bookmarks`), and the vCard kept in step
//! with PEP (module `vcard` with `pep`): XEP-0398 avatar conversion both ways and XEP-0292
//! vCard4.
use base64::Engine as _;
use canto_tests::*;
use canto_xml::Element;
use sha1::Digest as _;

const PS: &str = "http://jabber.org/protocol/pubsub";
const BM: &str = "urn:xmpp:bookmarks:1";
const LEGACY: &str = "storage:bookmarks";

async fn server() -> TestServer {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw").await;
    }
    s
}

async fn ask(c: &mut Client, xml: &str) -> Element {
    c.iq(xml).await.unwrap_or_else(|e| panic!("{xml}: {e:#}"))
}

fn ok(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

/// The `<item/>`s of an items result, as (id, payload).
fn items(r: &Element) -> Vec<(String, Element)> {
    r.get_child("pubsub", PS)
        .and_then(|p| p.get_child("items", PS))
        .map(|i| {
            i.children()
                .map(|it| {
                    (
                        it.attr("id").unwrap_or_default().to_string(),
                        it.children().next().cloned().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn items_of(node: &str, to: Option<&str>) -> String {
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    format!(
        "<iq type='get' id='{{id}}'{to}><pubsub xmlns='{PS}'><items node='{node}'/></pubsub></iq>"
    )
}

fn private_get() -> String {
    format!(
        "<iq type='get' id='{{id}}'><query xmlns='jabber:iq:private'><storage xmlns='{LEGACY}'/></query></iq>"
    )
}

fn legacy_conferences(storage: &Element) -> Vec<(String, String, String, String)> {
    storage
        .children()
        .filter(|c| c.is("conference", LEGACY))
        .map(|c| {
            (
                c.attr("jid").unwrap_or_default().to_string(),
                c.attr("name").unwrap_or_default().to_string(),
                c.attr("autojoin").unwrap_or_default().to_string(),
                c.get_child("nick", LEGACY)
                    .map(|n| n.text())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn publish_native(room: &str, name: &str, autojoin: bool, nick: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{BM}'><item id='{room}'>\
         <conference xmlns='{BM}' name='{name}' autojoin='{autojoin}'><nick>{nick}</nick>\
         <extensions><state xmlns='urn:example:x'/></extensions></conference></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#persist_items'><value>true</value></field>\
         <field var='pubsub#max_items'><value>max</value></field>\
         <field var='pubsub#send_last_published_item'><value>never</value></field>\
         <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_bookmarks_are_seen_by_old_clients_in_both_legacy_forms() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "new").await;
    ok(&ask(
        &mut a,
        &publish_native("room@conference.example.org", "The Room", true, "al"),
    )
    .await);
    ok(&ask(
        &mut a,
        &publish_native("other@conference.example.org", "Other", false, "ally"),
    )
    .await);

    // XEP-0049 with XEP-0048 storage.
    let r = ask(&mut a, &private_get()).await;
    ok(&r);
    let storage = r
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", LEGACY))
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        legacy_conferences(storage),
        vec![
            (
                "other@conference.example.org".into(),
                "Other".into(),
                "false".into(),
                "ally".into()
            ),
            (
                "room@conference.example.org".into(),
                "The Room".into(),
                "true".into(),
                "al".into()
            ),
        ],
        "{r}"
    );
    // XEP-0048 over PEP: the node storage:bookmarks, item `current`.
    let r = ask(&mut a, &items_of(LEGACY, None)).await;
    ok(&r);
    let got = items(&r);
    assert_eq!(got.len(), 1, "{r}");
    assert_eq!(got[0].0, "current");
    assert_eq!(legacy_conferences(&got[0].1).len(), 2, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_writes_become_native_items_kept_private_and_in_sync() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "old").await;
    let mut b = s.login("bob", "pw", "b").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    subscribe_to(&mut b, &mut a).await;

    // An old client stores two bookmarks in private storage.
    let set = |confs: &str| {
        format!(
            "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:private'><storage xmlns='{LEGACY}'>{confs}</storage></query></iq>"
        )
    };
    let one = "<conference jid='one@conf.example.org' name='One' autojoin='true'><nick>a</nick><password>pw1</password></conference>";
    let two = "<conference jid='two@conf.example.org' name='Two' autojoin='0'/>";
    ok(&ask(&mut a, &set(&format!("{one}{two}"))).await);
    let r = ask(&mut a, &items_of(BM, None)).await;
    ok(&r);
    let native = items(&r);
    let ids: Vec<&str> = native.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec!["one@conf.example.org", "two@conf.example.org"],
        "{r}"
    );
    let first = &native[0].1;
    assert!(first.is("conference", BM), "{r}");
    assert_eq!(first.attr("name"), Some("One"));
    assert_eq!(first.attr("autojoin"), Some("true"));
    assert_eq!(
        first.get_child("nick", BM).map(|n| n.text()).as_deref(),
        Some("a")
    );
    assert_eq!(
        first.get_child("password", BM).map(|n| n.text()).as_deref(),
        Some("pw1")
    );
    assert_eq!(native[1].1.attr("autojoin"), None, "false is left out: {r}");

    // XEP-0402 §3: the node is private (whitelist): a contact with a presence subscription
    // gets nothing.
    let r = ask(&mut b, &items_of(BM, Some("alice@localhost"))).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
    // …because the node is configured as XEP-0402 says.
    let r = ask(
        &mut a,
        &format!("<iq type='get' id='{{id}}'><pubsub xmlns='{PS}#owner'><configure node='{BM}'/></pubsub></iq>"),
    )
    .await;
    let value = |var: &str| {
        r.get_child("pubsub", &format!("{PS}#owner"))
            .and_then(|p| p.get_child("configure", &format!("{PS}#owner")))
            .and_then(|c| c.get_child("x", "jabber:x:data"))
            .and_then(|x| {
                x.children()
                    .find(|f| f.attr("var") == Some(var))
                    .and_then(|f| f.get_child("value", "jabber:x:data"))
                    .map(|v| v.text())
            })
    };
    assert_eq!(
        value("pubsub#access_model").as_deref(),
        Some("whitelist"),
        "{r}"
    );
    assert_eq!(value("pubsub#max_items").as_deref(), Some("max"), "{r}");
    assert_eq!(
        value("pubsub#send_last_published_item").as_deref(),
        Some("never"),
        "{r}"
    );

    // A later legacy write without `two` retracts it; an unchanged `one` stays as it was.
    ok(&ask(&mut a, &set(one)).await);
    let r = ask(&mut a, &items_of(BM, None)).await;
    let ids: Vec<String> = items(&r).into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, vec!["one@conf.example.org".to_string()], "{r}");

    // The same through XEP-0048 over PEP, with a result naming the item.
    let r = ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{LEGACY}'><item id='current'>\
             <storage xmlns='{LEGACY}'><conference jid='three@conf.example.org' name='Three' autojoin='true'/></storage>\
             </item></publish></pubsub></iq>"
        ),
    )
    .await;
    ok(&r);
    assert!(r.to_string().contains("<item id='current'/>"), "{r}");
    let r = ask(&mut a, &items_of(BM, None)).await;
    let ids: Vec<String> = items(&r).into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, vec!["three@conf.example.org".to_string()], "{r}");
    // The legacy node itself holds nothing: private storage reads the converted set.
    let r = ask(&mut a, &private_get()).await;
    let storage = r
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", LEGACY))
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(legacy_conferences(storage)[0].0, "three@conf.example.org");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_rewrite_keeps_native_extensions_and_the_account_advertises_the_conversion() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    ok(&ask(
        &mut a,
        &publish_native("room@conference.example.org", "Room", true, "al"),
    )
    .await);
    // An old client renames the room; the XEP-0402 <extensions/> it cannot see survive.
    ok(&ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:private'><storage xmlns='{LEGACY}'>\
             <conference jid='room@conference.example.org' name='Renamed' autojoin='true'><nick>al</nick></conference>\
             </storage></query></iq>"
        ),
    )
    .await);
    let r = ask(&mut a, &items_of(BM, None)).await;
    let got = items(&r);
    assert_eq!(got.len(), 1, "{r}");
    assert_eq!(got[0].1.attr("name"), Some("Renamed"), "{r}");
    assert!(
        got[0]
            .1
            .get_child("extensions", BM)
            .is_some_and(|x| x.get_child("state", "urn:example:x").is_some()),
        "{r}"
    );
    let r = ask(
        &mut a,
        "<iq type='get' id='{id}' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let text = r.to_string();
    for f in [
        "urn:xmpp:bookmarks:1#compat'",
        "urn:xmpp:bookmarks:1#compat-pep'",
        "urn:xmpp:pep-vcard-conversion:0'",
    ] {
        assert!(text.contains(f), "{f}: {r}");
    }
    s.stop().await;
}

/// Bookmarks an old client left in private storage before the module was on move to PEP at
/// the next bind, and leave private storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_storage_bookmarks_migrate_at_the_next_bind() {
    let storage = canto_storage::Storage::memory();
    let mut config = test_config();
    config.modules.retain(|m| m != "bookmarks");
    let dir = config.data_dir.clone();
    let s = TestServer::with_storage(config, storage.clone()).await;
    s.add_user("alice", "pw").await;
    let mut a = s.login("alice", "pw", "r").await;
    ok(&ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:private'><storage xmlns='{LEGACY}'>\
             <conference jid='old@conf.example.org' name='Old' autojoin='true'/></storage></query></iq>"
        ),
    )
    .await);
    drop(a);
    s.stop().await;

    let mut config = test_config();
    config.data_dir = dir;
    let s = TestServer::with_storage(config, storage).await;
    let mut a = s.login("alice", "pw", "r").await;
    a.sync().await;
    let r = ask(&mut a, &items_of(BM, None)).await;
    let ids: Vec<String> = items(&r).into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, vec!["old@conf.example.org".to_string()], "{r}");
    s.stop().await;
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn publish(node: &str, id: &str, payload: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{PS}'><publish node='{node}'><item id='{id}'>{payload}</item></publish></pubsub></iq>"
    )
}

fn photo(r: &Element) -> Option<(String, String)> {
    let p = r
        .get_child("vCard", "vcard-temp")?
        .get_child("PHOTO", "vcard-temp")?;
    Some((
        p.get_child("TYPE", "vcard-temp")
            .map(|t| t.text())
            .unwrap_or_default(),
        p.get_child("BINVAL", "vcard-temp")
            .map(|t| t.text())
            .unwrap_or_default(),
    ))
}

/// XEP-0398 §3.1 and §4: a client's XEP-0084 avatar becomes the vCard PHOTO (checked against
/// its hash), presence carries the hash, and empty metadata removes the photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pep_avatar_becomes_the_vcard_photo_and_the_presence_hash() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    let mut b = s.login("bob", "pw", "b").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    subscribe_to(&mut b, &mut a).await;
    let image = b"\x89PNG\r\n\x1a\n-an-image";
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let id = sha1_hex(image);
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:avatar:data",
            &id,
            &format!("<data xmlns='urn:xmpp:avatar:data'>{b64}</data>"),
        ),
    )
    .await);
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:avatar:metadata",
            &id,
            &format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{}' id='{id}' type='image/png'/></metadata>", image.len()),
        ),
    )
    .await);
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(photo(&r), Some(("image/png".into(), b64.clone())), "{r}");
    // XEP-0398 §4: presence without the element carries the hash.
    a.send("<presence><status>hi</status></presence>").await;
    let p = b
        .wait_for(|e| e.name() == "presence" && e.get_child("status", "jabber:client").is_some())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let hash = p
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(|p| p.text());
    assert_eq!(hash.as_deref(), Some(id.as_str()), "{p}");

    // Metadata pointing at data that does not hash to its id is not converted.
    let wrong = "0".repeat(40);
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:avatar:data",
            &wrong,
            &format!("<data xmlns='urn:xmpp:avatar:data'>{b64}</data>"),
        ),
    )
    .await);
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:avatar:metadata",
            &wrong,
            &format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='1' id='{wrong}' type='image/gif'/></metadata>"),
        ),
    )
    .await);
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(photo(&r), Some(("image/png".into(), b64)), "{r}");

    // XEP-0084 §4.5: empty metadata disables the avatar; the PHOTO goes.
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:avatar:metadata",
            "none",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
        ),
    )
    .await);
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(photo(&r), None, "{r}");
    s.stop().await;
}

/// XEP-0398 §3.2 and XEP-0292: a vcard-temp with a PHOTO becomes the avatar (data, then
/// metadata, item ids the SHA-1) and the vCard4 item; a client's vCard4 becomes vcard-temp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcard_becomes_the_pep_avatar_and_vcard4_and_back() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    let mut b = s.login("bob", "pw", "b").await;
    let image = b"GIF89a-tiny";
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let id = sha1_hex(image);
    ok(&ask(
        &mut a,
        &format!("<iq type='set' id='{{id}}'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME>\
         <PHOTO><TYPE>image/gif</TYPE><BINVAL>{b64}</BINVAL></PHOTO></vCard></iq>"),
    )
    .await);
    // The converted avatar is public like the vCard: bob, no contact, reads it.
    let r = ask(
        &mut b,
        &items_of("urn:xmpp:avatar:metadata", Some("alice@localhost")),
    )
    .await;
    ok(&r);
    let meta = items(&r);
    assert_eq!(meta.len(), 1, "{r}");
    assert_eq!(meta[0].0, id, "{r}");
    let info = meta[0]
        .1
        .get_child("info", "urn:xmpp:avatar:metadata")
        .cloned()
        .unwrap_or_default();
    assert_eq!(info.attr("type"), Some("image/gif"), "{r}");
    assert_eq!(
        info.attr("bytes"),
        Some(image.len().to_string().as_str()),
        "{r}"
    );
    let r = ask(
        &mut b,
        &items_of("urn:xmpp:avatar:data", Some("alice@localhost")),
    )
    .await;
    let data = items(&r);
    assert_eq!(
        data.first().map(|(i, d)| (i.clone(), d.text())),
        Some((id.clone(), b64)),
        "{r}"
    );
    let r = ask(&mut a, &items_of("urn:xmpp:vcard4", None)).await;
    let v4 = items(&r);
    assert_eq!(v4.first().map(|(i, _)| i.as_str()), Some("current"), "{r}");
    assert!(
        v4[0]
            .1
            .to_string()
            .contains("<fn><text>Alice Liddell</text></fn>"),
        "{r}"
    );

    // A client's vCard4 becomes vcard-temp; the photo stays.
    ok(&ask(
        &mut a,
        &publish(
            "urn:xmpp:vcard4",
            "current",
            "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Alice L.</text></fn><nickname><text>ally</text></nickname><email><text>alice@example.org</text></email></vcard>",
        ),
    )
    .await);
    let r = ask(
        &mut b,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    let card = r
        .get_child("vCard", "vcard-temp")
        .cloned()
        .unwrap_or_default();
    let t = |n: &str| card.get_child(n, "vcard-temp").map(|e| e.text());
    assert_eq!(t("FN").as_deref(), Some("Alice L."), "{r}");
    assert_eq!(t("NICKNAME").as_deref(), Some("ally"), "{r}");
    assert_eq!(
        card.get_child("EMAIL", "vcard-temp")
            .and_then(|e| e.get_child("USERID", "vcard-temp"))
            .map(|u| u.text())
            .as_deref(),
        Some("alice@example.org"),
        "{r}"
    );
    assert!(photo(&r).is_some(), "{r}");
    s.stop().await;
}

/// Derived from Prosody's empty_bookmarks script: an account that never had bookmarks has no
/// `storage:bookmarks` node (item-not-found), while private storage answers with an empty
/// `<storage/>` (XEP-0049 §2.3: nothing stored is the empty element).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bookmarks_yet() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    let r = ask(&mut a, &items_of(LEGACY, None)).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("item-not-found"),
        "{r}"
    );
    let r = ask(&mut a, &private_get()).await;
    ok(&r);
    let storage = r
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", LEGACY))
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(storage.children().count(), 0, "{r}");
    // Once bookmarks exist, even all removed again, the node answers (with no conference).
    ok(&ask(
        &mut a,
        &publish_native("r@conf.example.org", "R", false, "n"),
    )
    .await);
    ok(&ask(
        &mut a,
        &format!(
            "<iq type='set' id='{{id}}'><query xmlns='jabber:iq:private'><storage xmlns='{LEGACY}'/></query></iq>"
        ),
    )
    .await);
    let r = ask(&mut a, &items_of(LEGACY, None)).await;
    ok(&r);
    assert_eq!(legacy_conferences(&items(&r)[0].1).len(), 0, "{r}");
    s.stop().await;
}

/// XEP-0292's IQ interface (Prosody's mod_vcard4): set by the owner, the vCard4 is the PEP
/// node's item (presence access: contacts read it, strangers do not) and vcard-temp follows;
/// a vcard-temp set shows through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcard4_over_iq_is_the_pep_item_with_its_access_model() {
    let s = server().await;
    s.add_user("carol", "pw").await;
    let mut a = s.login("alice", "pw", "r").await;
    let mut b = s.login("bob", "pw", "b").await;
    let mut c = s.login("carol", "pw", "c").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    subscribe_to(&mut b, &mut a).await;
    const V4: &str = "urn:ietf:params:xml:ns:vcard-4.0";
    let get = format!("<iq type='get' id='{{id}}' to='alice@localhost'><vcard xmlns='{V4}'/></iq>");
    // Nothing yet.
    let r = ask(&mut b, &get).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("item-not-found"),
        "{r}"
    );
    ok(&ask(
        &mut a,
        &format!("<iq type='set' id='{{id}}'><vcard xmlns='{V4}'><fn><text>Alice A.</text></fn><note><text>hi</text></note></vcard></iq>"),
    )
    .await);
    let r = ask(&mut b, &get).await;
    ok(&r);
    let fn_text = |r: &Element| {
        r.get_child("vcard", V4)
            .and_then(|v| v.get_child("fn", V4))
            .and_then(|f| f.get_child("text", V4))
            .map(|t| t.text())
    };
    assert_eq!(fn_text(&r).as_deref(), Some("Alice A."), "{r}");
    // PEP's default access model: a stranger is refused.
    let r = ask(&mut c, &get).await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-authorized"),
        "{r}"
    );
    // Only the owner sets.
    let r = ask(
        &mut b,
        &format!("<iq type='set' id='{{id}}' to='alice@localhost'><vcard xmlns='{V4}'><fn><text>Mallory</text></fn></vcard></iq>"),
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    // vcard-temp followed.
    let r = ask(
        &mut c,
        "<iq type='get' id='{id}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    let card = r
        .get_child("vCard", "vcard-temp")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        card.get_child("FN", "vcard-temp")
            .map(|e| e.text())
            .as_deref(),
        Some("Alice A."),
        "{r}"
    );
    assert_eq!(
        card.get_child("NOTE", "vcard-temp")
            .map(|e| e.text())
            .as_deref(),
        Some("hi"),
        "{r}"
    );
    // And the other way.
    ok(&ask(
        &mut a,
        "<iq type='set' id='{id}'><vCard xmlns='vcard-temp'><FN>Alice Again</FN></vCard></iq>",
    )
    .await);
    let r = ask(&mut b, &get).await;
    assert_eq!(fn_text(&r).as_deref(), Some("Alice Again"), "{r}");
    s.stop().await;
}

//! Interoperability with a real client library: tokio-xmpp 6 logs two accounts in over STARTTLS
//! with SCRAM (SCRAM-SHA-256-PLUS with tls-exporter, its first choice on TLS 1.3) and they
//! exchange a message; a tokio-xmpp client joins a XEP-0045 room on conference.localhost and
//! talks in it, every stanza parsed by xmpp-parsers.
//!
//! tokio-xmpp cannot be told which certificate to trust; with `rustls-native-certs` it reads
//! `SSL_CERT_FILE`. This file is its own test binary (process), and its tests set the variable
//! one at a time (see [`with_server`]), so setting it affects nothing else.
#![allow(unsafe_code)]

use std::future::Future;
use std::sync::Mutex;

use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::parsers::message::{self, Lang, Message, MessageType};
use tokio_xmpp::parsers::muc::user::{Affiliation, Role, Status};
use tokio_xmpp::parsers::muc::{Muc, MucUser};
use tokio_xmpp::parsers::occupant_id::OccupantId;
use tokio_xmpp::parsers::presence::{self, Presence};
use tokio_xmpp::parsers::stanza_id::StanzaId;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client as XmppClient, Event, Stanza};

use canto_core::Config;
use canto_tests::*;

/// Held by each test of this binary for its whole run: the tests point `SSL_CERT_FILE` at their
/// own server's certificate, so they run one after the other.
static ENV: Mutex<()> = Mutex::new(());

/// Runs `body` on a runtime of its own against a server with `config` (a [`test_config`]),
/// whose certificate tokio-xmpp is made to trust.
fn with_server<F, Fut>(config: Config, body: F)
where
    F: FnOnce(TestServer) -> Fut,
    Fut: Future<Output = ()>,
{
    // A test that panicked released the lock poisoned; the next one may still run.
    let _one_at_a_time = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let ca = config.data_dir.join("certs").join(format!("{HOST}.crt"));
    // SAFETY: set_var is unsound only when another thread reads or writes the environment at the
    // same time. Each test of this binary sets it here, holding ENV, before its runtime or
    // server exists, and drops its runtime (joining its blocking threads) before releasing
    // ENV, so no thread of another test runs meanwhile; the test harness's main thread only
    // waits.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    // One thread for the server, the clients and the test. On a multi-threaded runtime (2
    // workers) the MUC test stalled about one run in five: tokio-xmpp's trace log showed the
    // room's presences (and later stanzas) read off the socket by its stream worker and handed
    // on ("no permit for received stanza available, blocking on channel send"), yet
    // `Client::next` yielded none of them for 10 s, while the client could still send (a
    // message it sent then reached alice). The server had written everything: the stall is
    // inside tokio-xmpp 6.0.0's worker-to-frontend channels. None in 80 runs on one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async move {
        let s = TestServer::with_config(config).await;
        assert_eq!(s.cert_pem_path(), ca);
        body(s).await;
    });
    drop(rt);
}

/// A tokio-xmpp client of `user` at `s` over STARTTLS (not yet online).
fn connect(s: &TestServer, user: &str, pw: &str) -> XmppClient {
    let jid = BareJid::new(&format!("{user}@{HOST}")).unwrap_or_else(|e| panic!("{e}"));
    XmppClient::new_starttls(
        jid,
        pw.to_string(),
        DnsConfig::addr(&s.addr.to_string()),
        Timeouts::default(),
    )
}

/// Polls `client` until it is online; returns the bound JID.
async fn online(client: &mut XmppClient) -> Jid {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap_or_else(|_| panic!("tokio-xmpp did not come online"))
            .unwrap_or_else(|| panic!("tokio-xmpp stream ended"));
        match ev {
            Event::Online { bound_jid, .. } => return bound_jid,
            Event::Disconnected(e) => panic!("tokio-xmpp disconnected: {e}"),
            Event::Stanza(_) => {}
        }
    }
}

#[test]
fn tokio_xmpp_clients_log_in_and_exchange_a_message() {
    with_server(test_config(), |s| async move {
        s.add_user("alice", "wonderland").await;
        s.add_user("bob", "builder").await;
        let mut alice = connect(&s, "alice", "wonderland");
        let mut bob = connect(&s, "bob", "builder");
        let alice_jid = online(&mut alice).await;
        let bob_jid = online(&mut bob).await;
        assert_eq!(alice_jid.to_bare().to_string(), "alice@localhost");
        assert_eq!(bob_jid.to_bare().to_string(), "bob@localhost");
        // The server's routing table agrees with what the library was told.
        assert!(s.is_bound(&alice_jid.to_string()));
        assert!(s.is_bound(&bob_jid.to_string()));

        let msg = Message::chat(Some(bob_jid.clone()))
            .with_body(Lang::default(), "hello from tokio-xmpp".to_string());
        alice
            .send_stanza(msg.into())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        let got = loop {
            let ev = tokio::time::timeout(WAIT, bob.next())
                .await
                .unwrap_or_else(|_| panic!("bob got no message"))
                .unwrap_or_else(|| panic!("bob's stream ended"));
            if let Event::Stanza(Stanza::Message(m)) = ev {
                break m;
            }
        };
        // RFC 6120 §8.1.2.1: the server stamped alice's full JID as sender.
        assert_eq!(got.from.as_ref(), Some(&alice_jid));
        // One body; its language is the stream's default (xml:lang='en' in the server's header,
        // RFC 6120 §4.7.4), which the library applies to the stanza.
        assert_eq!(
            got.bodies.values().map(String::as_str).collect::<Vec<_>>(),
            ["hello from tokio-xmpp"]
        );

        // A clean close on both sides ends both sessions.
        alice.send_end().await.unwrap_or_else(|e| panic!("{e}"));
        bob.send_end().await.unwrap_or_else(|e| panic!("{e}"));
        let server = s.running.server.clone();
        assert!(poll_until(WAIT, || server.sessions.count() == 0).await);
        s.stop().await;
    });
}

const ROOM: &str = "lobby@conference.localhost";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// The next stanza `client` receives.
async fn next_stanza(client: &mut XmppClient, what: &str) -> Stanza {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap_or_else(|_| panic!("tokio-xmpp got no {what}"))
            .unwrap_or_else(|| panic!("tokio-xmpp's stream ended waiting for {what}"));
        match ev {
            Event::Stanza(st) => return st,
            Event::Disconnected(e) => panic!("tokio-xmpp disconnected waiting for {what}: {e}"),
            Event::Online { .. } => {}
        }
    }
}

/// The muc#user payload of `p`, parsed by xmpp-parsers.
fn muc_user(p: &Presence) -> Option<MucUser> {
    p.payloads
        .iter()
        .find(|e| e.is("x", NS_MUC_USER))
        .map(|e| MucUser::try_from(e.clone()).unwrap_or_else(|e| panic!("muc#user: {e}")))
}

/// The one payload of type `T` in `payloads` (named `name` in `ns`), parsed.
fn payload<T>(payloads: &[tokio_xmpp::minidom::Element], name: &str, ns: &str) -> Option<T>
where
    T: TryFrom<tokio_xmpp::minidom::Element>,
    T::Error: std::fmt::Display,
{
    payloads
        .iter()
        .find(|e| e.is(name, ns))
        .map(|e| T::try_from(e.clone()).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// The status codes of the muc#user <x/> of a raw element.
fn raw_statuses(e: &canto_xml::Element) -> Vec<String> {
    e.get_child("x", NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tokio_xmpp_joins_a_room_and_talks_in_it() {
    let config = test_config();
    with_server(config, |s| async move {
        s.add_user("alice", "wonderland").await;
        s.add_user("bob", "builder").await;
        let room: BareJid = BareJid::new(ROOM).unwrap_or_else(|e| panic!("{e}"));
        let room_alice = format!("{ROOM}/Alice");
        let room_bob = FullJid::new(&format!("{ROOM}/Bob")).unwrap_or_else(|e| panic!("{e}"));

        // alice, a raw client, creates the room (XEP-0045 §10.1.1: 110 and 201) and accepts the
        // default configuration (§10.1.2, instant room), which unlocks it.
        let mut alice = s.login("alice", "wonderland", "raw").await;
        alice.send("<presence/>").await;
        alice
            .send(&format!(
                "<presence to='{room_alice}'><x xmlns='{NS_MUC}'/></presence>"
            ))
            .await;
        let own = alice
            .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(room_alice.as_str()))
            .await
            .unwrap_or_else(|e| panic!("alice's self-presence: {e}"));
        let st = raw_statuses(&own);
        assert!(
            st.contains(&"110".into()) && st.contains(&"201".into()),
            "{own}"
        );
        let r = alice
            .iq(&format!(
                "<iq type='set' id='{{id}}' to='{ROOM}'>\
                 <query xmlns='http://jabber.org/protocol/muc#owner'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ))
            .await
            .unwrap_or_else(|e| panic!("instant room: {e}"));
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let _ = alice.drain().await;

        // bob, with tokio-xmpp, joins: a presence carrying xmpp-parsers' Muc (§7.2.1).
        let mut bob = connect(&s, "bob", "builder");
        let bob_jid = online(&mut bob).await;
        let join = Presence::available()
            .with_to(room_bob.clone())
            .with_payload(Muc::new());
        bob.send_stanza(join.into())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        // §7.2.2: the presence of every occupant, then his own, marked with 110.
        let mut others = Vec::new();
        let (own, own_user) = loop {
            match next_stanza(&mut bob, "the room's presences").await {
                Stanza::Presence(p) if p.from.as_ref().map(Jid::to_bare) == Some(room.clone()) => {
                    assert_ne!(p.type_, presence::Type::Error, "join refused: {p:?}");
                    let user = muc_user(&p).unwrap_or_else(|| panic!("no muc#user: {p:?}"));
                    if user.status.contains(&Status::SelfPresence) {
                        break (p, user);
                    }
                    others.push((p, user));
                }
                _ => {}
            }
        };
        assert_eq!(own.from, Some(Jid::from(room_bob.clone())), "{own:?}");
        assert_eq!(own.type_, presence::Type::None, "{own:?}");
        assert!(
            !own_user.status.contains(&Status::RoomHasBeenCreated),
            "{own_user:?}"
        );
        assert_eq!(own_user.items.len(), 1, "{own_user:?}");
        assert_eq!(own_user.items[0].affiliation, Affiliation::None);
        assert_eq!(own_user.items[0].role, Role::Participant);
        // XEP-0421 §4: an occupant id on the presence.
        let bob_oid = payload::<OccupantId>(&own.payloads, "occupant-id", "urn:xmpp:occupant-id:0")
            .unwrap_or_else(|| panic!("no occupant-id: {own:?}"))
            .id;
        // alice, before him: owner and moderator, her real JID hidden from a participant of a
        // semi-anonymous room (§7.2.4).
        assert_eq!(others.len(), 1, "{others:?}");
        let (alice_p, alice_user) = &others[0];
        assert_eq!(
            alice_p.from.as_ref().map(ToString::to_string).as_deref(),
            Some(room_alice.as_str())
        );
        assert_eq!(alice_user.items.len(), 1, "{alice_user:?}");
        assert_eq!(alice_user.items[0].affiliation, Affiliation::Owner);
        assert_eq!(alice_user.items[0].role, Role::Moderator);
        assert_eq!(alice_user.items[0].jid, None, "{alice_user:?}");
        let alice_oid =
            payload::<OccupantId>(&alice_p.payloads, "occupant-id", "urn:xmpp:occupant-id:0")
                .unwrap_or_else(|| panic!("no occupant-id: {alice_p:?}"))
                .id;
        assert_ne!(alice_oid, bob_oid);
        // §7.2.15: then the subject (none yet: an empty <subject/>), with no body.
        let subject = loop {
            if let Stanza::Message(m) = next_stanza(&mut bob, "the subject").await {
                break m;
            }
        };
        assert_eq!(subject.type_, MessageType::Groupchat, "{subject:?}");
        assert_eq!(
            subject.from.as_ref().map(Jid::to_bare),
            Some(room.clone()),
            "{subject:?}"
        );
        assert!(subject.bodies.is_empty(), "{subject:?}");
        assert!(
            subject.subjects.values().all(String::is_empty),
            "{subject:?}"
        );
        // alice, a moderator, sees bob arrive with his real JID (§7.2.2, whois = moderators).
        let seen = alice
            .wait_for(|e| {
                e.name() == "presence" && e.attr("from") == Some(room_bob.to_string().as_str())
            })
            .await
            .unwrap_or_else(|e| panic!("alice seeing bob: {e}"));
        let item = seen
            .get_child("x", NS_MUC_USER)
            .and_then(|x| x.children().find(|c| c.name() == "item"))
            .unwrap_or_else(|| panic!("{seen}"));
        assert_eq!(
            item.attr("jid"),
            Some(bob_jid.to_string().as_str()),
            "{seen}"
        );

        // §7.4: bob's groupchat message is reflected to him and reaches alice, with the room's
        // stanza id (XEP-0359) and his occupant id (XEP-0421).
        let msg = Message::groupchat(Some(Jid::from(room.clone())))
            .with_body(Lang::default(), "hello from tokio-xmpp".to_string());
        let msg = Message {
            id: Some(message::Id("tokio-muc-1".to_string())),
            ..msg
        };
        bob.send_stanza(msg.into())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        let echo = loop {
            if let Stanza::Message(m) = next_stanza(&mut bob, "the reflection").await
                && !m.bodies.is_empty()
            {
                break m;
            }
        };
        assert_eq!(echo.type_, MessageType::Groupchat, "{echo:?}");
        assert_eq!(echo.from, Some(Jid::from(room_bob.clone())), "{echo:?}");
        assert_eq!(
            echo.id,
            Some(message::Id("tokio-muc-1".to_string())),
            "{echo:?}"
        );
        assert_eq!(
            echo.bodies.values().map(String::as_str).collect::<Vec<_>>(),
            ["hello from tokio-xmpp"]
        );
        let sid = payload::<StanzaId>(&echo.payloads, "stanza-id", "urn:xmpp:sid:0")
            .unwrap_or_else(|| panic!("no stanza-id: {echo:?}"));
        assert_eq!(sid.by, Jid::from(room.clone()), "{echo:?}");
        let oid = payload::<OccupantId>(&echo.payloads, "occupant-id", "urn:xmpp:occupant-id:0")
            .unwrap_or_else(|| panic!("no occupant-id: {echo:?}"));
        assert_eq!(oid.id, bob_oid);
        let got = alice
            .wait_for(|e| e.name() == "message" && e.get_child("body", "jabber:client").is_some())
            .await
            .unwrap_or_else(|e| panic!("alice's copy: {e}"));
        assert_eq!(
            got.attr("from"),
            Some(room_bob.to_string().as_str()),
            "{got}"
        );
        assert_eq!(
            got.get_child("stanza-id", "urn:xmpp:sid:0")
                .and_then(|e| e.attr("id")),
            Some(sid.id.as_str()),
            "{got}"
        );

        // alice's groupchat message, parsed on bob's side.
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat' id='raw-1'><body>hello from canto_tests</body></message>"
            ))
            .await;
        let m = loop {
            if let Stanza::Message(m) = next_stanza(&mut bob, "alice's message").await
                && !m.bodies.is_empty()
            {
                break m;
            }
        };
        assert_eq!(m.type_, MessageType::Groupchat, "{m:?}");
        assert_eq!(
            m.from.as_ref().map(ToString::to_string).as_deref(),
            Some(room_alice.as_str())
        );
        assert_eq!(
            m.bodies.values().map(String::as_str).collect::<Vec<_>>(),
            ["hello from canto_tests"]
        );
        let sid = payload::<StanzaId>(&m.payloads, "stanza-id", "urn:xmpp:sid:0")
            .unwrap_or_else(|| panic!("no stanza-id: {m:?}"));
        assert_eq!(sid.by, Jid::from(room.clone()), "{m:?}");
        let oid = payload::<OccupantId>(&m.payloads, "occupant-id", "urn:xmpp:occupant-id:0")
            .unwrap_or_else(|| panic!("no occupant-id: {m:?}"));
        assert_eq!(oid.id, alice_oid);

        // §7.14: bob leaves; his own unavailable presence has 110, alice sees him go.
        bob.send_stanza(Presence::unavailable().with_to(room_bob.clone()).into())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        let gone = loop {
            if let Stanza::Presence(p) = next_stanza(&mut bob, "his unavailable presence").await
                && p.type_ == presence::Type::Unavailable
            {
                break p;
            }
        };
        assert_eq!(gone.from, Some(Jid::from(room_bob.clone())), "{gone:?}");
        let user = muc_user(&gone).unwrap_or_else(|| panic!("no muc#user: {gone:?}"));
        assert!(user.status.contains(&Status::SelfPresence), "{user:?}");
        assert_eq!(user.items.first().map(|i| &i.role), Some(&Role::None));
        let left = alice
            .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
            .await
            .unwrap_or_else(|e| panic!("alice seeing bob leave: {e}"));
        assert_eq!(
            left.attr("from"),
            Some(room_bob.to_string().as_str()),
            "{left}"
        );

        bob.send_end().await.unwrap_or_else(|e| panic!("{e}"));
        s.stop().await;
    });
}

//! Interoperability with a real client library: tokio-xmpp 6 logs two accounts in over STARTTLS
//! with SCRAM (SCRAM-SHA-256-PLUS with tls-exporter, its first choice on TLS 1.3) and they
//! exchange a message.
//!
//! tokio-xmpp cannot be told which certificate to trust; with `rustls-native-certs` it reads
//! `SSL_CERT_FILE`. This file is its own test binary (process) with a single test, so setting the
//! variable affects nothing else.
#![allow(unsafe_code)]

use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client as XmppClient, Event, Stanza};

use canto_tests::*;

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
    let config = test_config();
    let ca = config.data_dir.join("certs").join(format!("{HOST}.crt"));
    // SAFETY: set_var is unsound only when another thread reads or writes the environment at the
    // same time. This runs first in the only test of this binary, before any runtime or server
    // thread exists; the test harness's main thread only waits for this one.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async move {
        let s = TestServer::with_config(config).await;
        assert_eq!(s.cert_pem_path(), ca);
        s.add_user("alice", "wonderland").await;
        s.add_user("bob", "builder").await;
        let addr = s.addr.to_string();
        let connect = |user: &str, pw: &str| {
            let jid = BareJid::new(&format!("{user}@{HOST}")).unwrap_or_else(|e| panic!("{e}"));
            XmppClient::new_starttls(
                jid,
                pw.to_string(),
                DnsConfig::addr(&addr),
                Timeouts::default(),
            )
        };
        let mut alice = connect("alice", "wonderland");
        let mut bob = connect("bob", "builder");
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

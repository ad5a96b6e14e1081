//! XMPP over WebSocket (RFC 7395): the WebSocket transport (`canto_net::http::websocket`) and
//! the whole c2s engine behind it, driven by arbitrary client messages over an in-memory
//! WebSocket (`serve_ws_memory`). One fresh server per input: memory storage holding one
//! account (`user` / `pencil` on `localhost`), SASL offered without TLS.
//!
//! Input format: WebSocket messages separated by 0xFF (never part of UTF-8); a message that is
//! valid UTF-8 is sent as text, any other as binary. After each message the client waits until
//! the server is idle; after the last one the WebSocket goes away.
//!
//! Checked, besides no panic / hang / unbounded memory:
//! * the connection task ends once the WebSocket is gone, leaving no session behind;
//! * every message the server sent is text holding exactly one complete, namespace-complete
//!   XML element (RFC 7395 §3.3.3), parsed on its own.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use canto_net::c2s::memory_config;
use canto_net::http::websocket::{WsMessage, serve_ws_memory};
use canto_net::{C2sContext, CertStore};
use canto_proto::sasl::Credentials;
use canto_xml::{Limits, StreamEvent, StreamParser};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    certs: Arc<CertStore>,
    creds: Credentials,
    modules: Vec<Arc<dyn canto_core::Module>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        certs: CertStore::ephemeral(&["localhost".to_string()])
            .unwrap_or_else(|e| panic!("certificates: {e}")),
        creds: Credentials::from_password("pencil", 32),
        modules: canto_modules::all(),
    })
}

const MESSAGE_END: u8 = 0xff;

async fn session(data: &[u8]) -> Vec<WsMessage> {
    let f = fixture();
    let server =
        canto_core::Server::new(memory_config(), canto_storage::Storage::memory(), &f.modules)
            .unwrap_or_else(|e| panic!("server: {e}"));
    server
        .storage
        .accounts
        .create("localhost", "user", &f.creds)
        .await
        .unwrap_or_else(|e| panic!("account: {e}"));
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ctx = C2sContext::new(server.clone(), f.certs.clone(), shutdown_rx);
    let peer = "192.0.2.1:5280".parse().unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx, conn) = serve_ws_memory(ctx, peer);
    let conn = tokio::spawn(conn);
    for msg in data.split(|&b| b == MESSAGE_END) {
        let m = match std::str::from_utf8(msg) {
            Ok(s) => WsMessage::text(s),
            Err(_) => WsMessage::binary(msg.to_vec()),
        };
        if tx.send(m).await.is_err() {
            break; // the server ended the session
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(tx);
    match tokio::time::timeout(Duration::from_secs(3600), conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("the connection task did not end after the WebSocket went away"),
    }
    assert_eq!(server.sessions.count(), 0, "a session outlived its WebSocket");
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    out
}

/// RFC 7395 §3.3.3: each message is one element that parses with no context.
fn check_message(m: &WsMessage) {
    let text = match m {
        WsMessage::Text(t) => t.as_str(),
        WsMessage::Close(_) => return,
        other => panic!("the server sent a non-text message: {other:?}"),
    };
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_elements: usize::MAX,
        max_attrs: usize::MAX,
    });
    let mut events = Vec::new();
    let doc = format!("<doc xmlns='urn:canto:fuzz:none'>{text}");
    if let Err(e) = p.feed(doc.as_bytes(), &mut events) {
        panic!("the server sent a message that is not XML on its own ({e}): {text:?}");
    }
    assert!(
        matches!(events.as_slice(), [StreamEvent::Header(_), StreamEvent::Stanza(e)] if e.ns() != "urn:canto:fuzz:none"),
        "not exactly one namespace-complete element: {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let out = rt.block_on(session(data));
    for m in &out {
        check_message(m);
    }
});

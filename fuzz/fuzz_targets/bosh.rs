//! BOSH (XEP-0124, XEP-0206): arbitrary request bodies through the `/http-bind` request handler
//! (`canto_net::http::bosh::fuzz_request`: parsing, session creation, rid windows, hold/wait,
//! pause, terminate) and the whole c2s engine behind it. One fresh server per input: memory
//! storage holding one account (`user` / `pencil` on `localhost`), plain HTTP with
//! `require_encryption = false` so SASL is offered.
//!
//! Input format: request bodies separated by 0xFF. `$SID` in a body is replaced by the sid of the
//! last session created (a fuzzer cannot guess a random one). Each request runs in a task of its
//! own (a held request must not stop the next one); after each, the client waits until the
//! server is idle.
//!
//! Checked, besides no panic / hang / unbounded memory:
//! * every request is answered (time is virtual: a request waiting forever shows up as an
//!   elapsed 1-hour timeout);
//! * every HTTP 200 answer is one well-formed `<body/>` in the httpbind namespace;
//! * once the client stops, every session expires (`inactivity`) and no c2s session is left in
//!   the routing table.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use canto_net::c2s::memory_config;
use canto_net::http::HttpContext;
use canto_net::http::bosh::{NS_HTTPBIND, fuzz_request, reaper};
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

const TURN_END: u8 = 0xff;

fn replace_sid(body: &[u8], sid: &str) -> Vec<u8> {
    const MARK: &[u8] = b"$SID";
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(MARK) {
            out.extend_from_slice(sid.as_bytes());
            i += MARK.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// The `sid` attribute of a creation response.
fn sid_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find(" sid='")? + 6..];
    Some(rest[..rest.find('\'')?].to_string())
}

fn check_body(body: &[u8]) {
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_elements: usize::MAX,
        max_attrs: usize::MAX,
    });
    let mut events = Vec::new();
    if let Err(e) = p.feed(body, &mut events) {
        panic!(
            "the server wrote bad XML ({e}): {:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(
        p.is_closed(),
        "incomplete body: {:?}",
        String::from_utf8_lossy(body)
    );
    match events.first() {
        Some(StreamEvent::Header(h)) if h.is("body", NS_HTTPBIND) => {}
        _ => panic!("not a BOSH body: {:?}", String::from_utf8_lossy(body)),
    }
}

async fn run(data: &[u8]) {
    let f = fixture();
    let mut config = memory_config();
    config.http.bosh_max_wait = 5;
    config.http.bosh_max_inactivity = 5;
    config.http.bosh_max_pause = 10;
    let server = canto_core::Server::new(config, canto_storage::Storage::memory(), &f.modules)
        .unwrap_or_else(|e| panic!("server: {e}"));
    server
        .storage
        .accounts
        .create("localhost", "user", &f.creds)
        .await
        .unwrap_or_else(|e| panic!("account: {e}"));
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let c2s = C2sContext::new(server.clone(), f.certs.clone(), shutdown_rx);
    let (alive, _alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let ctx = HttpContext::new(c2s, alive.downgrade());
    let reaper = tokio::spawn(reaper(ctx.clone()));
    let mut sid = String::new();
    let mut pending = Vec::new();
    for turn in data.split(|&b| b == TURN_END) {
        let body = replace_sid(turn, &sid);
        let c = ctx.clone();
        pending.push(tokio::spawn(async move { fuzz_request(&c, &body).await }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Answers that came at once give the sid for the next turns.
        let mut still = Vec::new();
        for t in pending {
            if t.is_finished() {
                let (status, body) = t.await.unwrap_or_else(|e| panic!("request task: {e}"));
                if status == 200 {
                    check_body(&body);
                    if let Some(s) = sid_of(&body) {
                        sid = s;
                    }
                }
            } else {
                still.push(t);
            }
        }
        pending = still;
    }
    for t in pending {
        match tokio::time::timeout(Duration::from_secs(3600), t).await {
            Ok(Ok((status, body))) => {
                if status == 200 {
                    check_body(&body);
                }
            }
            Ok(Err(e)) => panic!("request task failed: {e}"),
            Err(_) => panic!("a request was never answered"),
        }
    }
    // Nobody polls any more: every session expires, and its c2s session with it (XEP-0198
    // hibernation included, within the hour).
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        ctx.bosh.count(),
        0,
        "a BOSH session outlived its inactivity"
    );
    assert_eq!(
        server.sessions.count(),
        0,
        "a session outlived its BOSH session"
    );
    reaper.abort();
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(run(data));
});

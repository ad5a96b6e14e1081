// The c2s fuzz harness, shared by the `c2s` target (default modules) and `c2s_all` (every
// module on); each includes this file after setting `ALL_MODULES`. See c2s.rs for what it
// checks.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use canto_net::c2s::{memory_config, serve_memory};
use canto_net::{C2sContext, CertStore};
use canto_proto::sasl::Credentials;
use canto_xml::{Limits, StreamParser};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    certs: Arc<CertStore>,
    creds: Credentials,
    modules: Vec<Arc<dyn canto_core::Module>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        // Certificate generation is slow; the store is read-only, so one serves every input.
        certs: CertStore::ephemeral(&["localhost".to_string()])
            .unwrap_or_else(|e| panic!("certificates: {e}")),
        // Few iterations: PLAIN pays one derivation per attempt, and the fuzzer attempts a lot.
        creds: Credentials::from_password("pencil", 32),
        modules: canto_modules::all(),
    })
}

const TURN_END: u8 = 0xff;

/// Output bytes beyond which we stop collecting (the server answers a few stanzas per input
/// stanza; this only keeps a pathological case from eating the RSS limit here instead of
/// there).
const MAX_OUTPUT: usize = 16 << 20;

async fn session(data: &[u8]) -> Vec<u8> {
    let f = fixture();
    let mut config = memory_config();
    if ALL_MODULES {
        // Every module Canto has, those off by default too (MAM archives every message,
        // in-band registration runs before authentication, extdisco answers).
        config.modules = f.modules.iter().map(|m| m.name().to_string()).collect();
    }
    let server = canto_core::Server::new(config, canto_storage::Storage::memory(), &f.modules)
    .unwrap_or_else(|e| panic!("server: {e}"));
    server
        .storage
        .accounts
        .create("localhost", "user", &f.creds)
        .await
        .unwrap_or_else(|e| panic!("account: {e}"));
    // Kept alive (not sent): a dropped sender must not look like a shutdown either way.
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ctx = C2sContext::new(server.clone(), f.certs.clone(), shutdown_rx);
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let peer = "192.0.2.1:5222".parse().unwrap_or_else(|e| panic!("{e}"));
    let conn = tokio::spawn(serve_memory(ctx, server_end, peer));
    let (mut rd, mut wr) = tokio::io::split(client);
    // The client always reads, or the server's writes would block as on a full socket.
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) if out.len() < MAX_OUTPUT => out.extend_from_slice(&buf[..n]),
                Ok(_) => {}
            }
        }
    });
    for turn in data.split(|&b| b == TURN_END) {
        if wr.write_all(turn).await.is_err() {
            break; // the server closed the connection
        }
        // Virtual time advances only when every task is idle (and not during PLAIN's
        // spawn_blocking derivation): this returns once the server has handled the turn.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = wr.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(3600), conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("the connection task did not end after the client closed"),
    }
    let out = match tokio::time::timeout(Duration::from_secs(3600), reader).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("reader: {e}"),
        Err(_) => panic!("the server's end stayed open after its task ended"),
    };
    assert_eq!(
        server.sessions.count(),
        0,
        "a session outlived its connection"
    );
    out
}

include!("check_output.rs");

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let out = rt.block_on(session(data));
    // For checking what a seed reaches: C2S_FUZZ_DUMP=1 target/…/c2s corpus/c2s/plain-session
    if std::env::var_os("C2S_FUZZ_DUMP").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out));
    }
    check_output(&out);
});

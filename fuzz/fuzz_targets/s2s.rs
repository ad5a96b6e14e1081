//! An incoming server-to-server stream (`canto_net::s2s`: header checks, features, dialback
//! results and verification requests, SASL attempts, stanzas and the authorization of their
//! `from`/`to`) over an in-memory transport (`S2s::serve_memory`), driven by arbitrary peer
//! bytes. One fresh server per input: memory storage, `s2s.require_encryption = false` (no TLS
//! on a pipe), DNS answering nothing (a dialback callback fails at once, as for an unknown
//! domain).
//!
//! Input format: peer turns separated by 0xFF, as in the c2s target.
//!
//! Checked, besides no panic / hang / unbounded memory: the connection task ends once the peer
//! has closed (virtual time), and everything the server wrote is well-formed XML.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use canto_net::CertStore;
use canto_net::s2s::dns::StaticResolver;
use canto_net::s2s::verify::Verifier;
use canto_xml::{Limits, StreamParser};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    certs: Arc<CertStore>,
    verifier: Arc<Verifier>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        certs: CertStore::ephemeral(&["localhost".to_string()])
            .unwrap_or_else(|e| panic!("certificates: {e}")),
        verifier: Arc::new(Verifier::from_roots(&[]).unwrap_or_else(|e| panic!("verifier: {e}"))),
    })
}

const TURN_END: u8 = 0xff;
const MAX_OUTPUT: usize = 16 << 20;

async fn session(data: &[u8]) -> Vec<u8> {
    let f = fixture();
    let mut config = canto_net::c2s::memory_config();
    config.s2s.require_encryption = false;
    config.s2s.secure_auth = false;
    config.s2s.connect_timeout = 5;
    let server = canto_core::Server::new(
        config,
        canto_storage::Storage::memory(),
        &canto_modules::all(),
    )
    .unwrap_or_else(|e| panic!("server: {e}"));
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let s2s = canto_net::s2s::S2s::new(
        server.clone(),
        f.certs.clone(),
        Arc::new(StaticResolver::new()),
        f.verifier.clone(),
        b"fuzz secret, fixed".to_vec(),
        shutdown_rx,
    );
    server.set_remote_router(s2s.clone());
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let conn = {
        let s2s = s2s.clone();
        tokio::spawn(async move { s2s.serve_memory(server_end).await })
    };
    let (mut rd, mut wr) = tokio::io::split(client);
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
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = wr.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(3600), conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("the connection task did not end after the peer closed"),
    }
    match tokio::time::timeout(Duration::from_secs(3600), reader).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("reader: {e}"),
        Err(_) => panic!("the server's end stayed open after its task ended"),
    }
}

include!("check_output.rs");

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let out = rt.block_on(session(data));
    if std::env::var_os("S2S_FUZZ_DUMP").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out));
    }
    check_output(&out);
});

//! Canto federating with real peers (issue 14): Prosody and ejabberd from Debian, started by
//! tests/federation/peers.py (see federation_harness.rs, which checks the harness itself by
//! federating them with each other). Canto serves `canto.example` in-process on 127.0.0.13
//! (c2s 5222, s2s 5269, direct TLS s2s 5270) with the certificate the harness made, and finds
//! the peers through the harness's DNS server. Between a Canto account and each peer's,
//! tests/python/federation_flow.py checks a message, an IQ to the other's full JID, an IQ to the
//! other's server and a presence subscription, each way; then the peers' logs must show that
//! they authenticated canto.example both ways with the mode's mechanism:
//! - SASL EXTERNAL: everyone trusts the test CA and requires certificates;
//! - dialback: nobody trusts it (`secure_auth = false` on Canto), so certificates do not verify;
//! - SASL EXTERNAL over direct TLS: DNS also publishes `_xmpps-server` records (XEP-0368),
//!   which both peers then use;
//! - with bidi on Prosody (mod_s2s_bidi, XEP-0288), in both modes: `verify-auth` then accepts
//!   one bidirectional stream authenticated once for Prosody.

use canto_core::config::CertificateConfig;
use canto_tests::*;

use crate::federation_harness::{
    Account, Mode, Options, Peers, require_federation_tools, run_flow, show,
};

/// Canto's configuration for `peers`: its one host, listeners on its loopback address, the
/// harness's DNS server, its certificate, and in SASL EXTERNAL mode the test CA.
fn canto_config(peers: &Peers) -> canto_core::Config {
    let c = &peers.canto;
    let mut cfg = test_config();
    cfg.hosts = vec![c.domain.clone()];
    cfg.c2s.listen = vec![c.c2s()];
    cfg.c2s.direct_tls_listen = Vec::new();
    cfg.s2s.listen = vec![c.s2s()];
    cfg.s2s.direct_tls_listen = vec![c.direct_tls()];
    match peers.mode {
        Mode::External => {
            cfg.s2s.ca_file = peers.ca.clone();
            cfg.s2s.secure_auth = true;
        }
        Mode::Dialback => {
            // Not the test CA: the peers' certificates do not verify, so only dialback can
            // authenticate them.
            cfg.s2s.secure_auth = false;
        }
    }
    cfg.dns.servers = vec![peers.dns.clone()];
    cfg.certificates.insert(
        c.domain.clone(),
        CertificateConfig {
            certificate: c.cert.clone(),
            key: c.key.clone(),
        },
    );
    cfg
}

async fn canto_with_peers(mode: Mode, options: Options) {
    require_federation_tools();
    let peers = Peers::start(mode, options);
    let s = TestServer::with_config(canto_config(&peers)).await;
    let carol: &Account = &peers.canto.users[0];
    s.add_user_on(&peers.canto.domain, &carol.user, &carol.password)
        .await;

    let mut failed = Vec::new();
    for peer in [&peers.prosody, &peers.ejabberd] {
        let other = &peer.users[0];
        let (ok, report) = run_flow(&peers.ca, carol, other).await;
        show(
            &format!("{} <-> {} ({mode:?})", carol.jid, other.jid),
            &report,
        );
        if !ok {
            failed.push(format!("{} <-> {}:\n{report}", carol.jid, other.jid));
        }
    }
    let pairs = [
        format!("prosody:{}", peers.canto.domain),
        format!("ejabberd:{}", peers.canto.domain),
    ];
    let pairs: Vec<&str> = pairs.iter().map(String::as_str).collect();
    let (auth_ok, auth) = peers.verify_auth(&pairs);
    show("s2s authentication in the peers' logs", &auth);
    if !auth_ok {
        failed.push(auth);
    }
    s.stop().await;
    assert!(
        failed.is_empty(),
        "federation with real peers in {} mode{}:\n{}",
        mode.as_str(),
        match (options.direct_tls, options.bidi) {
            (false, false) => "",
            (true, false) => " over direct TLS",
            (false, true) => " with bidi on Prosody",
            (true, true) => " over direct TLS with bidi on Prosody",
        },
        failed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_with_prosody_and_ejabberd() {
    canto_with_peers(Mode::External, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_with_prosody_and_ejabberd() {
    canto_with_peers(Mode::Dialback, Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_over_direct_tls_with_prosody_and_ejabberd() {
    let options = Options {
        direct_tls: true,
        ..Options::default()
    };
    canto_with_peers(Mode::External, options).await;
}

/// Prosody with mod_s2s_bidi: one stream carries both directions (XEP-0288) when Canto offers
/// or requests bidi (`[s2s] bidi`, on by default); ejabberd has no bidi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_with_bidi_on_prosody() {
    let options = Options {
        bidi: true,
        ..Options::default()
    };
    canto_with_peers(Mode::External, options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_with_bidi_on_prosody() {
    let options = Options {
        bidi: true,
        ..Options::default()
    };
    canto_with_peers(Mode::Dialback, options).await;
}

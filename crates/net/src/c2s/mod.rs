//! Client-to-server connections (RFC 6120). The session engine ([`engine`]) is transport
//! independent: it consumes stream events and emits serialized elements through a
//! [`transport::Transport`]. The files, one concern each:
//!
//! * `engine.rs` — the connection's state, main loop (reads, the session's queue, timers,
//!   close), stream open and features, routing of bound stanzas, the end of the session
//!   (`finish`) and the teardown guard (`Drop`);
//! * `negotiation.rs` — STARTTLS, SASL, in-band registration, resource binding;
//! * `sm.rs` — XEP-0198 stream management and resumption;
//! * `csi.rs` — XEP-0352 client state indication (what an inactive client's queue holds back);
//! * `transport.rs` — the seam: the [`transport::Transport`] trait;
//! * `tcp.rs` — the TCP adapter: listener connections, STARTTLS and direct TLS, refusal over the
//!   per-address cap, and the XML-stream transport;
//! * `memory.rs` — the in-memory adapter (fuzzing, tests).

mod csi;
mod engine;
mod memory;
mod negotiation;
mod sm;
mod tcp;
#[cfg(test)]
mod tests;
pub mod transport;

use std::sync::Arc;

use canto_core::Server;
use canto_xml::Limits;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::limits::ConnectionCounter;
use crate::tls::CertStore;

pub use memory::serve_memory;
pub use tcp::serve_connection;

/// Shared by all client connections.
pub struct C2sContext {
    /// The server.
    pub server: Arc<Server>,
    /// Certificates (for channel binding and reload).
    pub certs: Arc<CertStore>,
    /// TLS acceptor built from the certificate store.
    pub acceptor: TlsAcceptor,
    /// Turns true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Open connections per address (`limits.max_connections_per_ip`).
    pub connections: Arc<ConnectionCounter>,
    /// Where stream ids, generated resources and ping ids come from (random by default;
    /// injectable for tests).
    pub ids: fn() -> u64,
}

impl C2sContext {
    /// The context every connection shares. `shutdown` turning true ends every connection with
    /// `<system-shutdown/>` (a dropped sender does not).
    pub fn new(
        server: Arc<Server>,
        certs: Arc<CertStore>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<C2sContext> {
        let acceptor = TlsAcceptor::from(certs.server_config());
        Arc::new(C2sContext {
            server,
            certs,
            acceptor,
            shutdown,
            connections: Arc::default(),
            ids: rand::random::<u64>,
        })
    }
}

/// A configuration for running connections in memory ([`serve_memory`], [`fuzz_context`]):
/// one host `localhost`, memory storage, no listeners, SASL without TLS, no read rate limit and
/// no authentication back-off (a fuzzer fails logins thousands of times from one address).
#[doc(hidden)]
pub fn memory_config() -> canto_core::Config {
    let mut c = canto_core::Config {
        hosts: vec!["localhost".into()],
        ..canto_core::Config::default()
    };
    c.c2s.listen = Vec::new();
    c.c2s.direct_tls_listen = Vec::new();
    c.c2s.require_encryption = false;
    c.storage.backend = "memory".into();
    c.admin_socket = std::path::PathBuf::new();
    c.limits.c2s.rate = "unlimited".into();
    c.limits.auth_failures_before_delay = u32::MAX;
    c.limits.auth_failures_per_account_before_delay = u32::MAX;
    c
}

/// A [`C2sContext`] for [`serve_memory`] without files or sockets: a [`Server`] on memory
/// storage with `modules` loaded (pass `canto_modules::all()`; this crate cannot name them),
/// and certificates generated in memory. Create accounts through `ctx.server.storage.accounts`.
#[doc(hidden)]
pub fn fuzz_context(
    config: canto_core::Config,
    modules: &[Arc<dyn canto_core::Module>],
) -> Result<Arc<C2sContext>, String> {
    let certs = CertStore::ephemeral(&config.hosts).map_err(|e| e.to_string())?;
    let server = Server::new(config, canto_storage::Storage::memory(), modules)?;
    // The sender is dropped: nothing ever shuts these connections down but their peer.
    let (_, shutdown) = watch::channel(false);
    Ok(C2sContext::new(server, certs, shutdown))
}

/// Runs a connection's session over any transport (the HTTP transports' entry to the one
/// engine); `tls_first`: the transport is encrypted from the start (its channel-binding data
/// is taken at once).
pub(crate) async fn serve_transport<T: transport::Transport>(
    ctx: Arc<C2sContext>,
    t: T,
    peer: std::net::SocketAddr,
    tls_first: bool,
) {
    engine::serve(ctx, t, peer, tls_first).await;
}

pub(crate) fn unauth_limits(config: &canto_core::Config) -> Limits {
    Limits {
        max_stanza_bytes: config.c2s.max_stanza_size_unauthenticated,
        max_depth: Limits::UNAUTHENTICATED
            .max_depth
            .min(config.c2s.max_stanza_depth),
        max_elements: Limits::UNAUTHENTICATED.max_elements,
        max_attrs: Limits::UNAUTHENTICATED
            .max_attrs
            .min(config.c2s.max_attributes),
    }
}

pub(crate) fn auth_limits(config: &canto_core::Config) -> Limits {
    Limits {
        max_stanza_bytes: config.c2s.max_stanza_size,
        max_depth: config.c2s.max_stanza_depth,
        max_elements: config.c2s.max_stanza_elements,
        max_attrs: config.c2s.max_attributes,
    }
}

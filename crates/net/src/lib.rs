//! Canto's network layer: listeners, TLS, and one task per connection. It decides no routing:
//! parsed stanzas go to `canto-core`'s router.
#![forbid(unsafe_code)]

pub mod admin;
pub mod c2s;
pub mod component;
pub mod http;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod s2s;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canto_core::Server;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use c2s::{C2sContext, serve_memory};
pub use tls::{CertStore, TlsError};

/// A bound listening socket and whether it speaks direct TLS (XEP-0368).
pub struct Listener {
    socket: TcpListener,
    direct_tls: bool,
}

impl Listener {
    /// Binds a listener.
    pub async fn bind(addr: &str, direct_tls: bool) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Ok(Listener { socket, direct_tls })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether this listener speaks direct TLS.
    pub fn is_direct_tls(&self) -> bool {
        self.direct_tls
    }
}

/// Binds every c2s listener in the configuration.
pub async fn bind_c2s(config: &canto_core::Config) -> std::io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for a in &config.c2s.listen {
        out.push(Listener::bind(a, false).await?);
    }
    for a in &config.c2s.direct_tls_listen {
        out.push(Listener::bind(a, true).await?);
    }
    Ok(out)
}

/// Running listeners; [`Network::shutdown`] stops them and every connection.
pub struct Network {
    /// The HTTP server's shared state, when it listens.
    http: Option<Arc<http::HttpContext>>,
    shutdown: watch::Sender<bool>,
    alive_tx: Option<mpsc::Sender<()>>,
    alive_rx: mpsc::Receiver<()>,
    certs: Arc<CertStore>,
    server: Arc<Server>,
}

/// The bound admin socket and its path.
pub type AdminSocket = (tokio::net::UnixListener, std::path::PathBuf);

/// Starts accepting on `listeners`, the HTTP listeners and the admin socket, if any.
pub fn start(
    server: Arc<Server>,
    certs: Arc<CertStore>,
    listeners: Vec<Listener>,
    http_listeners: Vec<http::HttpListener>,
    admin: Option<AdminSocket>,
) -> Network {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    if let Some((l, path)) = admin {
        tokio::spawn(admin::serve(server.clone(), l, path, shutdown_rx.clone()));
    }
    let ctx = c2s::C2sContext::new(server.clone(), certs.clone(), shutdown_rx.clone());
    let http = (!http_listeners.is_empty()).then(|| {
        let h = http::HttpContext::new(ctx.clone(), alive_tx.downgrade());
        http::start(h.clone(), http_listeners);
        h
    });
    for l in listeners {
        let ctx = ctx.clone();
        let alive = alive_tx.clone();
        let mut stop = shutdown_rx.clone();
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, direct_tls = l.direct_tls, "listening for clients");
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = l.socket.accept() => match r {
                        Ok((tcp, peer)) => {
                            tokio::spawn(c2s::serve_connection(ctx.clone(), tcp, peer, l.direct_tls, alive.clone()));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }
    Network {
        http,
        shutdown,
        alive_tx: Some(alive_tx),
        alive_rx,
        certs,
        server,
    }
}

impl Network {
    /// The HTTP server's shared state (BOSH sessions, uploads), when it listens.
    pub fn http(&self) -> Option<&Arc<http::HttpContext>> {
        self.http.as_ref()
    }

    /// Starts federation: the core's remote router, the s2s listeners. Connections hold the
    /// shutdown signal and the liveness token like client connections.
    pub fn start_s2s(
        &self,
        listeners: Vec<s2s::S2sListener>,
        resolver: Arc<dyn s2s::dns::Resolver>,
        verifier: Arc<s2s::verify::Verifier>,
        secret: Vec<u8>,
    ) -> Arc<s2s::S2s> {
        let s2s = s2s::S2s::new(
            self.server.clone(),
            self.certs.clone(),
            resolver,
            verifier,
            secret,
            self.shutdown.subscribe(),
        );
        self.server.set_remote_router(s2s.clone());
        if let Some(alive) = &self.alive_tx {
            s2s.start(listeners, alive.clone());
        }
        s2s
    }

    /// Serves `/metrics` on `listener` (`[metrics] listen`) until shutdown.
    pub fn start_metrics(&self, listener: metrics::MetricsListener) {
        metrics::start(self.server.clone(), listener, self.shutdown.subscribe());
    }

    /// The certificate store (for reload).
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Sends `<system-shutdown/>` to every stream, stops accepting and waits up to `grace` for
    /// connections to finish; then ends the sessions hibernating for XEP-0198 resumption, so
    /// their unacknowledged messages reach offline storage instead of vanishing.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.alive_tx = None;
        let _ = tokio::time::timeout(grace, self.alive_rx.recv()).await;
        self.server.end_all_hibernating().await;
    }
}

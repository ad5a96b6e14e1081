//! The startup sequence (ARCHITECTURE.md, "Startup"; the order is Prosody's `util.startup`): every
//! step in a fixed order, recorded so a test can check it. Signal handlers are installed before
//! any listener or background task exists, so no signal can arrive at a part of the process
//! that would treat it with the default action (exit) or never see it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use canto_core::{Config, Server};
use canto_net::{CertStore, Network};
use canto_storage::{Backend, Storage};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// The steps, in the order they must happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Configuration loaded and validated.
    Config,
    /// Logging set up.
    Logging,
    /// SIGTERM, SIGINT and SIGHUP handlers installed.
    Signals,
    /// Storage opened, migrations run.
    Storage,
    /// Certificates loaded or generated.
    Certificates,
    /// Hosts and modules built.
    Modules,
    /// Listening sockets bound.
    Listeners,
    /// The DNS resolver for outgoing server connections made (hickory: its tasks and
    /// sockets exist from here on, after the signal handlers, as the seed says).
    Resolver,
    /// Cluster mode only (`[cluster] nats_url`): joined the cluster over NATS (its client's
    /// tasks start here, after the signal handlers), before any session can bind.
    Cluster,
    /// Accept loops and other background tasks started.
    Background,
    /// `READY=1` sent to systemd (when `NOTIFY_SOCKET` is set).
    Ready,
}

/// Records the steps as they happen.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<Step>>>);

impl Trace {
    fn step(&self, s: Step) {
        info!(step = ?s, "startup");
        if let Ok(mut v) = self.0.lock() {
            v.push(s);
        }
    }

    /// The steps so far.
    pub fn steps(&self) -> Vec<Step> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// The storage backend a configuration names.
pub fn backend(config: &Config) -> Backend {
    match config.storage.backend.as_str() {
        "memory" => Backend::Memory,
        "postgresql" => Backend::Postgres {
            url: config.storage.url.clone(),
            pool_size: config.storage.pool_size,
        },
        _ => Backend::Sqlite {
            path: config.sqlite_path(),
        },
    }
}

/// A running server.
pub struct Running {
    /// The server.
    pub server: Arc<Server>,
    /// Listeners and connections.
    pub network: Network,
    /// Bound c2s addresses: STARTTLS ones, then direct TLS ones.
    pub starttls_addrs: Vec<std::net::SocketAddr>,
    /// Direct TLS addresses.
    pub direct_tls_addrs: Vec<std::net::SocketAddr>,
    /// Bound plain HTTP addresses (`[http] listen`).
    pub http_addrs: Vec<std::net::SocketAddr>,
    /// Bound HTTPS addresses (`[http] https_listen`).
    pub https_addrs: Vec<std::net::SocketAddr>,
    /// The bound `/metrics` address (`[metrics] listen`), if on.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Bound s2s addresses (`[s2s] listen`).
    pub s2s_addrs: Vec<std::net::SocketAddr>,
    /// Bound direct TLS s2s addresses (`[s2s] direct_tls_listen`).
    pub s2s_direct_tls_addrs: Vec<std::net::SocketAddr>,
    /// Federation.
    pub s2s: std::sync::Arc<canto_net::s2s::S2s>,
    /// Bound external component addresses (`[component] listen`, XEP-0114).
    pub component_addrs: Vec<std::net::SocketAddr>,
    /// This node's cluster membership, in cluster mode.
    pub cluster: Option<canto_cluster::Cluster>,
}

/// The part of startup after signals: storage, certificates, modules, listeners, background
/// tasks. Tests call it directly with listeners on 127.0.0.1:0.
pub async fn start(config: Config, storage: Option<Storage>, trace: &Trace) -> Result<Running> {
    start_with_modules(config, storage, Vec::new(), trace).await
}

/// [`start_with_modules`] with the DNS answers of `resolver` (tests inject them).
pub async fn start_with_resolver(
    config: Config,
    storage: Option<Storage>,
    extra: Vec<std::sync::Arc<dyn canto_core::Module>>,
    resolver: Arc<dyn canto_net::s2s::dns::Resolver>,
    trace: &Trace,
) -> Result<Running> {
    start_inner(config, storage, extra, Some(resolver), trace).await
}

/// [`start`] with `extra` modules available besides Canto's own (enabled, like those, by
/// name in `modules`): tests load test services this way.
pub async fn start_with_modules(
    config: Config,
    storage: Option<Storage>,
    extra: Vec<std::sync::Arc<dyn canto_core::Module>>,
    trace: &Trace,
) -> Result<Running> {
    start_inner(config, storage, extra, None, trace).await
}

async fn start_inner(
    config: Config,
    storage: Option<Storage>,
    extra: Vec<std::sync::Arc<dyn canto_core::Module>>,
    resolver: Option<Arc<dyn canto_net::s2s::dns::Resolver>>,
    trace: &Trace,
) -> Result<Running> {
    let storage = match storage {
        Some(s) => s,
        None => Storage::open(&backend(&config))
            .await
            .context("opening storage")?,
    };
    trace.step(Step::Storage);
    let certs = CertStore::load(&config).context("loading certificates")?;
    trace.step(Step::Certificates);
    // The metrics recorder, once per process, before anything records (docs/metrics.md): the
    // recording code caches handles, which must be the recorder's.
    canto_net::metrics::install();
    let mut available = canto_modules::all();
    available.extend(extra);
    let server = Server::new(config.clone(), storage, &available).map_err(anyhow::Error::msg)?;
    trace.step(Step::Modules);
    let listeners = canto_net::bind_c2s(&config).await?;
    let mut starttls_addrs = Vec::new();
    let mut direct_tls_addrs = Vec::new();
    for l in &listeners {
        let a = l.local_addr()?;
        if l.is_direct_tls() {
            direct_tls_addrs.push(a);
        } else {
            starttls_addrs.push(a);
        }
    }
    let http_listeners = canto_net::http::bind(&config).await?;
    let mut http_addrs = Vec::new();
    let mut https_addrs = Vec::new();
    for l in &http_listeners {
        let a = l.local_addr()?;
        if l.is_tls() {
            https_addrs.push(a);
        } else {
            http_addrs.push(a);
        }
    }
    let s2s_listeners = canto_net::s2s::bind(&config).await?;
    let mut s2s_addrs = Vec::new();
    let mut s2s_direct_tls_addrs = Vec::new();
    for l in &s2s_listeners {
        let a = l.local_addr()?;
        if l.is_direct_tls() {
            s2s_direct_tls_addrs.push(a);
        } else {
            s2s_addrs.push(a);
        }
    }
    let metrics_listener = canto_net::metrics::bind(&config).await?;
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let component_listeners = canto_net::component::bind(&config).await?;
    let component_addrs = component_listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin = match config.admin_socket_path() {
        Some(p) => Some((
            canto_net::admin::bind(&p).with_context(|| format!("binding {}", p.display()))?,
            p,
        )),
        None => None,
    };
    trace.step(Step::Listeners);
    // Federation's resolver (the seed: DNS work starts only after the signal handlers), the
    // peers' certificate verifier and the dialback secret.
    let resolver: Arc<dyn canto_net::s2s::dns::Resolver> = match resolver {
        Some(r) => r,
        None => Arc::new(
            canto_net::s2s::dns::HickoryResolver::new(&config.dns)
                .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?,
        ),
    };
    let verifier = Arc::new(
        canto_net::s2s::verify::Verifier::new(&config.s2s.ca_file)
            .map_err(|e| anyhow::anyhow!("s2s.ca_file: {e}"))?,
    );
    let secret = canto_net::s2s::dialback_secret(&config.data_dir)
        .context("the dialback secret in data_dir")?;
    trace.step(Step::Resolver);
    let cluster = if config.cluster.enabled() {
        let c = canto_cluster::Cluster::start(server.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        trace.step(Step::Cluster);
        Some(c)
    } else {
        None
    };
    let network = canto_net::start(server.clone(), certs, listeners, http_listeners, admin);
    let s2s = network.start_s2s(s2s_listeners, resolver, verifier, secret);
    if let Some(l) = metrics_listener {
        network.start_metrics(l);
    }
    network.start_components(component_listeners);
    // Background work (the seed's lesson: after signals and listeners): module timers.
    server.start_timers();
    trace.step(Step::Background);
    Ok(Running {
        server,
        network,
        starttls_addrs,
        direct_tls_addrs,
        http_addrs,
        https_addrs,
        metrics_addr,
        s2s_addrs,
        s2s_direct_tls_addrs,
        s2s,
        component_addrs,
        cluster,
    })
}

/// Puts back, in `new`, the keys a running server cannot change — what hosts it serves, which
/// modules are loaded (their features, hooks and services are built once), where it listens and
/// stores — and names each one that differed, so SIGHUP refuses those changes and says so
/// instead of half-applying them. Everything else (limits, module sections, certificates, the
/// log level) takes effect, and the entity-capabilities hash is computed again
/// (`Server::reload_config`).
pub fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut refused = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                refused.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("hosts", hosts);
    keep!("modules", modules);
    keep!("services", services);
    keep!("data_dir", data_dir);
    keep!("admin_socket", admin_socket);
    keep!("storage", storage);
    keep!("c2s.listen", c2s.listen);
    keep!("c2s.direct_tls_listen", c2s.direct_tls_listen);
    keep!("http.listen", http.listen);
    keep!("http.https_listen", http.https_listen);
    keep!("metrics.listen", metrics.listen);
    keep!("s2s.listen", s2s.listen);
    keep!("s2s.direct_tls_listen", s2s.direct_tls_listen);
    keep!("dns", dns);
    keep!("s2s.ca_file", s2s.ca_file);
    keep!("component.listen", component.listen);
    // External components are hosted services, built once: which there are and where they are
    // listed need a restart; a new secret applies from the next handshake.
    let shape = |c: &Config| {
        c.components
            .iter()
            .map(|(d, c)| (d.clone(), c.parent.clone(), c.name.clone()))
            .collect::<Vec<_>>()
    };
    if shape(new) != shape(running) {
        refused.push("components");
        new.components = running.components.clone();
    }
    refused
}

/// Reloads what SIGHUP reloads: configuration (limits), certificates and the log level.
pub fn reload(running: &Running, path: Option<&PathBuf>, log: &crate::logging::LogHandle) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let config = match path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reload failed; keeping the old configuration");
                return;
            }
        },
        None => running.server.config().as_ref().clone(),
    };
    let mut config = config;
    for key in keep_restart_only(&running.server.config(), &mut config) {
        warn!(
            key,
            "changing this needs a restart; the running value is kept (the rest of the file is applied)"
        );
    }
    // Module sections first: an unknown or invalid one refuses the whole reload, before
    // anything (certificates, log level) has changed.
    let checked = canto_core::module::check_sections(&config, &canto_modules::all())
        .and_then(|()| running.server.reload_config(config.clone()));
    if let Err(e) = checked {
        error!(error = %e, "reload refused; keeping the old configuration");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        return;
    }
    if let Err(e) = running.network.certs().reload(&config) {
        error!(error = %e, "certificate reload failed; keeping the old certificates");
    }
    log.set_level(&config.log.level);
    info!("configuration reloaded");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// `canto serve`: the whole sequence, then run until SIGTERM or SIGINT.
pub async fn serve(
    config: Config,
    path: Option<PathBuf>,
    log: crate::logging::LogHandle,
    trace: Trace,
) -> Result<()> {
    serve_until(config, path, log, trace, std::future::pending()).await
}

/// [`serve`], which also shuts down when `stop` completes: tests run the whole sequence
/// in-process and check the [`Trace`].
pub async fn serve_until(
    config: Config,
    path: Option<PathBuf>,
    log: crate::logging::LogHandle,
    trace: Trace,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    trace.step(Step::Config);
    trace.step(Step::Logging);
    // Before anything else runs: signals (a task or thread started earlier could see a signal
    // with the default action, exit, as Prosody found with its DNS thread).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    trace.step(Step::Signals);
    let running = start(config, None, &trace).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    trace.step(Step::Ready);
    info!(version = env!("CARGO_PKG_VERSION"), "Canto is ready");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&running, path.as_ref(), &log),
            _ = &mut stop => break,
        }
    }
    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.network.shutdown(Duration::from_secs(5)).await;
    if let Some(c) = running.cluster {
        c.leave().await;
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_what_needs_a_restart_and_names_it() {
        let running = Config::default();
        let mut new = running.clone();
        new.hosts = vec!["other.example".into()];
        new.modules.retain(|m| m != "ping");
        new.c2s.listen = vec!["127.0.0.1:1".into()];
        new.offline.max_messages = 7;
        let refused = keep_restart_only(&running, &mut new);
        assert_eq!(refused, vec!["hosts", "modules", "c2s.listen"]);
        assert_eq!(new.hosts, running.hosts);
        assert_eq!(new.modules, running.modules);
        assert_eq!(new.c2s.listen, running.c2s.listen);
        // What can change is applied.
        assert_eq!(new.offline.max_messages, 7);
        // Nothing changed: nothing refused.
        let mut same = running.clone();
        assert!(keep_restart_only(&running, &mut same).is_empty());
    }

    #[test]
    fn reload_applies_a_component_secret_but_not_new_components() {
        let mut running = Config::default();
        let gw = canto_core::config::ComponentConfig {
            secret: "old".into(),
            ..Default::default()
        };
        running.components.insert("gw.localhost".into(), gw.clone());
        // A new secret: applied (the next handshake uses it).
        let mut new = running.clone();
        if let Some(c) = new.components.get_mut("gw.localhost") {
            c.secret = "new".into();
        }
        assert!(keep_restart_only(&running, &mut new).is_empty());
        assert_eq!(new.components["gw.localhost"].secret, "new");
        // Another component, or another listener: refused and kept.
        let mut new = running.clone();
        new.components.insert("other.localhost".into(), gw);
        new.component.listen = vec!["127.0.0.1:5347".into()];
        let refused = keep_restart_only(&running, &mut new);
        assert_eq!(refused, vec!["component.listen", "components"]);
        assert_eq!(new.components, running.components);
        assert_eq!(new.component.listen, running.component.listen);
    }

    #[tokio::test]
    async fn reload_computes_the_caps_hash_again() {
        let config = Config {
            modules: vec!["disco".into()],
            ..Config::default()
        };
        let server = Server::new(
            config.clone(),
            canto_storage::Storage::memory(),
            &canto_modules::all(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ver = |s: &Server| s.caps().attr("ver").map(str::to_string);
        let before = ver(&server);
        // XEP-0157 addresses are in disco#info, so in the hash (XEP-0115 §5.4).
        let mut changed = config.clone();
        changed
            .set_section("contact", "admin = [\"xmpp:admin@localhost\"]")
            .unwrap_or_else(|e| panic!("{e}"));
        server
            .reload_config(changed)
            .unwrap_or_else(|e| panic!("{e}"));
        let after = ver(&server);
        assert!(before.is_some() && after.is_some());
        assert_ne!(before, after);
        // An invalid section refuses the reload: nothing changes.
        let mut bad = config.clone();
        bad.set_section("contact", "admin = 3")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(server.reload_config(bad).is_err());
        assert_eq!(ver(&server), after);
        // Back to the old configuration: the old hash.
        server
            .reload_config(config)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ver(&server), before);
    }
}

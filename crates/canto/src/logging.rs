//! Logging through `tracing`, with a level that SIGHUP can change.

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// Changes the log filter at run time.
#[derive(Clone)]
pub struct LogHandle(Option<reload::Handle<EnvFilter, Registry>>);

impl LogHandle {
    /// A handle that changes nothing (tests, commands that do not log).
    pub fn none() -> LogHandle {
        LogHandle(None)
    }

    /// Sets a new level or filter directive; a bad one is reported and ignored.
    pub fn set_level(&self, level: &str) {
        let Some(h) = &self.0 else { return };
        match EnvFilter::try_new(level) {
            Ok(f) => {
                let _ = h.reload(f);
            }
            Err(e) => tracing::error!(level, error = %e, "invalid log level; keeping the old one"),
        }
    }
}

/// Installs the global subscriber writing to standard error. `RUST_LOG` overrides `level`.
pub fn init(level: &str) -> LogHandle {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_err()
    {
        return LogHandle(None);
    }
    LogHandle(Some(handle))
}

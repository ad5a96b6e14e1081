//! `/metrics` (docs/metrics.md): the process's metrics recorder and its own listener,
//! `[metrics] listen` — never a route of the public `[http]` listeners. Plain HTTP/1.1, one
//! route (`GET /metrics`), OpenMetrics 1.0 text.
//!
//! The recorder (`metrics-exporter-prometheus`) is installed once per process ([`install`]),
//! whether or not anything listens, so that handles cached by the recording code are live;
//! recording is atomic adds, and histogram samples are folded into their buckets every few
//! seconds by an upkeep thread (they would otherwise pile up unscraped).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use canto_core::Server;
use canto_core::metrics as m;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The `Content-Type` of the response (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// How long a scraper may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (the first call; later ones return the same handle).
/// `None` if another recorder was installed first (by an embedding program).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(m::LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                warn!(error = %e, "a metrics recorder is installed already; /metrics stays empty");
                return None;
            }
            m::recorder_installed();
            m::describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            Some(handle)
        })
        .as_ref()
}

/// The metrics as OpenMetrics text, the gauges read at scrape time set first.
pub fn render(server: &Server) -> String {
    m::set_sessions(
        server.sessions.count(),
        server.sm.hibernating(),
        server.sessions.mirrors(),
    );
    match install() {
        Some(h) => to_openmetrics(&h.render()),
        None => "# EOF\n".to_string(),
    }
}

/// Converts the exporter's Prometheus text (format 0.0.4) to OpenMetrics 1.0: a counter's
/// family is named without `_total` in its `# TYPE` and `# HELP` lines (its samples keep
/// `name_total`), no blank lines, and `# EOF` at the end.
pub fn to_openmetrics(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let meta = ["# TYPE ", "# HELP "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(&name)
                && let Some(family) = name.strip_suffix("_total")
            {
                out.push_str(prefix);
                out.push_str(family);
                if !tail.is_empty() || prefix == "# HELP " {
                    out.push(' ');
                }
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// A bound `[metrics] listen` socket.
pub struct MetricsListener {
    socket: TcpListener,
}

impl MetricsListener {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds `[metrics] listen`; `None` when it is empty (off).
pub async fn bind(config: &canto_core::Config) -> std::io::Result<Option<MetricsListener>> {
    let a = config.metrics.listen.trim();
    if a.is_empty() {
        return Ok(None);
    }
    let socket = TcpListener::bind(a).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {a} (metrics): {e}"))
    })?;
    Ok(Some(MetricsListener { socket }))
}

/// Serves `GET /metrics` on `listener` until `stop` says the server is shutting down.
pub fn start(server: Arc<Server>, listener: MetricsListener, mut stop: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "listening for metrics scrapes");
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.socket.accept() => match r {
                    Ok((tcp, peer)) => {
                        let server = server.clone();
                        let stop = stop.clone();
                        tokio::spawn(serve(server, tcp, peer, stop));
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = async { stop.wait_for(|down| *down).await.map(|_| ()) } => break,
            }
        }
    });
}

async fn serve(
    server: Arc<Server>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let server = server.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&server, &req)) }
    });
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        }
        Ok(()) = async { stop.wait_for(|down| *down).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

fn respond<B>(server: &Server, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, render(server))
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "\
# HELP canto_stanzas_in_total Stanzas received from clients, by kind
# TYPE canto_stanzas_in_total counter
canto_stanzas_in_total{kind=\"message\"} 3
canto_stanzas_in_total{kind=\"iq\"} 7

# TYPE canto_uploads_total counter
canto_uploads_total 1

# HELP canto_sessions Bound sessions
# TYPE canto_sessions gauge
canto_sessions 2

# HELP canto_routing_duration_seconds Time spent routing
# TYPE canto_routing_duration_seconds histogram
canto_routing_duration_seconds_bucket{kind=\"message\",le=\"0.001\"} 2
canto_routing_duration_seconds_bucket{kind=\"message\",le=\"+Inf\"} 3
canto_routing_duration_seconds_sum{kind=\"message\"} 0.004
canto_routing_duration_seconds_count{kind=\"message\"} 3

";

    #[test]
    fn prometheus_text_becomes_openmetrics() {
        let om = to_openmetrics(RENDERED);
        let expected = "\
# HELP canto_stanzas_in Stanzas received from clients, by kind
# TYPE canto_stanzas_in counter
canto_stanzas_in_total{kind=\"message\"} 3
canto_stanzas_in_total{kind=\"iq\"} 7
# TYPE canto_uploads counter
canto_uploads_total 1
# HELP canto_sessions Bound sessions
# TYPE canto_sessions gauge
canto_sessions 2
# HELP canto_routing_duration_seconds Time spent routing
# TYPE canto_routing_duration_seconds histogram
canto_routing_duration_seconds_bucket{kind=\"message\",le=\"0.001\"} 2
canto_routing_duration_seconds_bucket{kind=\"message\",le=\"+Inf\"} 3
canto_routing_duration_seconds_sum{kind=\"message\"} 0.004
canto_routing_duration_seconds_count{kind=\"message\"} 3
# EOF
";
        assert_eq!(om, expected);
    }

    #[test]
    fn the_exporters_own_text_converts() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(m::LATENCY_BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            m::describe();
            metrics::counter!(m::AUTH_FAILURES, "mechanism" => "PLAIN").increment(2);
            metrics::gauge!(m::SESSIONS).set(4.0);
            metrics::histogram!(m::ROUTING_DURATION, "kind" => "message").record(0.002);
        });
        let om = to_openmetrics(&handle.render());
        let lines: Vec<&str> = om.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{om}");
        assert!(!lines.iter().any(|l| l.is_empty()), "{om}");
        assert!(
            lines.contains(&"# TYPE canto_auth_failures counter"),
            "{om}"
        );
        assert!(
            lines.contains(&"# HELP canto_auth_failures Failed SASL authentications, by mechanism"),
            "{om}"
        );
        assert!(
            lines.contains(&"canto_auth_failures_total{mechanism=\"PLAIN\"} 2"),
            "{om}"
        );
        assert!(lines.contains(&"# TYPE canto_sessions gauge"), "{om}");
        assert!(lines.contains(&"canto_sessions 4"), "{om}");
        assert!(
            lines.contains(&"# TYPE canto_routing_duration_seconds histogram"),
            "{om}"
        );
        assert!(
            lines.contains(
                &"canto_routing_duration_seconds_bucket{kind=\"message\",le=\"0.0025\"} 1"
            ),
            "{om}"
        );
        assert!(
            lines.contains(
                &"canto_routing_duration_seconds_bucket{kind=\"message\",le=\"0.001\"} 0"
            ),
            "{om}"
        );
        assert!(
            lines.contains(&"canto_routing_duration_seconds_count{kind=\"message\"} 1"),
            "{om}"
        );
    }

    #[test]
    fn empty_registry_is_just_eof() {
        assert_eq!(to_openmetrics(""), "# EOF\n");
        assert_eq!(to_openmetrics("\n\n"), "# EOF\n");
    }

    #[test]
    fn a_gauge_named_total_keeps_its_name() {
        let om = to_openmetrics("# TYPE x_total gauge\nx_total 1\n");
        assert_eq!(om, "# TYPE x_total gauge\nx_total 1\n# EOF\n");
    }
}

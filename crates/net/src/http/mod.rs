//! The HTTP(S) server (`[http]`): one listener set carrying web clients' XMPP sessions and
//! uploads, on hyper (HTTP/1.1) with axum's router. The files, one concern each:
//!
//! * `mod.rs` — listeners, the per-connection HTTP server (header and body limits, slow-request
//!   timeouts, connection caps), the real client's address behind trusted proxies (RFC 7239),
//!   CORS, and the routes;
//! * `websocket.rs` — `/xmpp-websocket` (RFC 7395): a [`crate::c2s::transport::Transport`] for
//!   the one session engine;
//! * `bosh.rs` — `/http-bind` (XEP-0124, XEP-0206): BOSH sessions, also a transport of the
//!   engine;
//! * `framing.rs` — the engine's output cut into self-contained elements for both;
//! * `hostmeta.rs` — `/.well-known/host-meta[.json]` (XEP-0156);
//! * `upload.rs` — PUT and GET of XEP-0363 uploads (the slots come from the `upload` service).

pub mod bosh;
pub mod framing;
mod hostmeta;
pub mod upload;
pub mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use canto_core::config::{cidr_contains, parse_cidr};
use canto_proto::sasl::ChannelBindings;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::c2s::C2sContext;
use crate::limits::ConnectionSlot;

/// A bound HTTP listener.
pub struct HttpListener {
    socket: TcpListener,
    tls: bool,
}

impl HttpListener {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether this listener speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Binds `[http] listen` and `https_listen`.
pub async fn bind(config: &canto_core::Config) -> std::io::Result<Vec<HttpListener>> {
    let mut out = Vec::new();
    for (addrs, tls) in [
        (&config.http.listen, false),
        (&config.http.https_listen, true),
    ] {
        for a in addrs {
            let socket = TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {a} (http): {e}"))
            })?;
            out.push(HttpListener { socket, tls });
        }
    }
    Ok(out)
}

/// What every HTTP connection shares.
pub struct HttpContext {
    /// The client-connection context: the server, certificates, shutdown, per-address counts.
    pub c2s: Arc<C2sContext>,
    /// TLS for the HTTPS listeners (ALPN `http/1.1`).
    acceptor: TlsAcceptor,
    /// BOSH sessions.
    pub bosh: bosh::Sessions,
    /// Upload files and their signatures.
    pub uploads: upload::Files,
    /// HTTP connections open now (`http.max_connections`).
    open: AtomicUsize,
    /// Upgraded by every connection and every session that outlives its request, so shutdown
    /// can wait for them (`Network::shutdown`); weak here, or shutdown would wait for the
    /// context itself.
    alive: mpsc::WeakSender<()>,
    /// The first HTTPS and HTTP ports bound, for the default external URL.
    ports: Mutex<(Option<u16>, Option<u16>)>,
}

/// Facts about the connection a request came on, for the handlers.
#[derive(Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The real client (the peer, or the client a trusted proxy names).
    pub client: SocketAddr,
    /// HTTPS, or a trusted proxy says the client used HTTPS.
    pub secure: bool,
    /// Channel-binding data of this connection's TLS (none behind a proxy).
    pub cb: ChannelBindings,
    /// The connection's per-address slot and shutdown token, for a session that takes the
    /// connection over (a WebSocket outlives the HTTP exchange that opened it).
    pub hold: Arc<Mutex<Option<Held>>>,
}

/// What keeps a connection counted: its per-address slot and the shutdown token.
pub struct Held {
    pub(crate) _slot: Option<ConnectionSlot>,
    pub(crate) _alive: Option<mpsc::Sender<()>>,
    /// Counts the connection in `http.max_connections` (and the gauge) until the last holder
    /// is gone: a WebSocket keeps it after its HTTP exchange is over.
    pub(crate) _open: OpenGuard,
}

/// One open HTTP connection, counted until dropped.
pub struct OpenGuard {
    ctx: Arc<HttpContext>,
    _gauge: canto_core::metrics::GaugeGuard,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.ctx.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpContext {
    /// A token that keeps shutdown waiting while held (a BOSH session's task).
    pub fn alive(&self) -> Option<mpsc::Sender<()>> {
        self.alive.upgrade()
    }

    /// The context; `alive` is the network's shutdown-wait token.
    pub fn new(c2s: Arc<C2sContext>, alive: mpsc::WeakSender<()>) -> Arc<HttpContext> {
        Arc::new(HttpContext {
            acceptor: TlsAcceptor::from(c2s.certs.http_server_config()),
            bosh: bosh::Sessions::default(),
            uploads: upload::Files::new(&c2s.server),
            open: AtomicUsize::new(0),
            alive,
            ports: Mutex::new((None, None)),
            c2s,
        })
    }

    /// The public base URL (`http.external_url`, else derived from the listeners) for `host`.
    pub fn external_url(&self, host: &str) -> String {
        let config = self.c2s.server.config();
        if !config.http.external_url.is_empty() {
            return config.http.external_url.trim_end_matches('/').to_string();
        }
        let (https, http) = self.ports.lock().map(|p| *p).unwrap_or_default();
        match (https, http) {
            (Some(p), _) => format!("https://{host}:{p}"),
            (None, Some(p)) => format!("http://{host}:{p}"),
            (None, None) => format!("https://{host}"),
        }
    }
}

/// Starts accepting on `listeners`.
pub fn start(ctx: Arc<HttpContext>, listeners: Vec<HttpListener>) {
    for l in &listeners {
        if let (Ok(a), Ok(mut p)) = (l.local_addr(), ctx.ports.lock()) {
            let slot = if l.tls { &mut p.0 } else { &mut p.1 };
            slot.get_or_insert(a.port());
        }
    }
    let router = routes(ctx.clone());
    for l in listeners {
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, tls = l.tls, "listening for HTTP");
        }
        let ctx = ctx.clone();
        let router = router.clone();
        let mut stop = ctx.c2s.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = l.socket.accept() => match r {
                        Ok((tcp, peer)) => accept(&ctx, &router, tcp, peer, l.tls),
                        Err(e) => {
                            warn!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }
    tokio::spawn(bosh::reaper(ctx.clone()));
}

/// Counts an accepted connection against the caps and serves it.
fn accept(
    ctx: &Arc<HttpContext>,
    router: &Router,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    let config = ctx.c2s.server.config();
    let trusted = is_trusted(&config, peer.ip());
    if ctx.open.load(Ordering::Relaxed) >= config.http.max_connections {
        debug!(%peer, "too many HTTP connections; refused");
        return;
    }
    // Behind a trusted proxy one address stands for many clients: they are counted per
    // session by the real address instead (WebSocket, BOSH).
    let max = if trusted || config.limits.connection_limit_exempt(peer.ip()) {
        0
    } else {
        config.limits.max_connections_per_ip
    };
    drop(config);
    let Some(slot) = ctx.c2s.connections.acquire(peer.ip(), max) else {
        debug!(%peer, "too many connections from this address; HTTP connection refused");
        return;
    };
    ctx.open.fetch_add(1, Ordering::Relaxed);
    let open = OpenGuard {
        ctx: ctx.clone(),
        _gauge: canto_core::metrics::http_connection(),
    };
    let _ = tcp.set_nodelay(true);
    let held = Held {
        _slot: slot,
        _alive: ctx.alive.upgrade(),
        _open: open,
    };
    let ctx = ctx.clone();
    let router = router.clone();
    tokio::spawn(async move {
        if tls {
            let timeout = Duration::from_secs(ctx.c2s.server.config().http.header_timeout);
            match tokio::time::timeout(timeout, ctx.acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let cb = crate::tls::bindings(&ctx.c2s.certs, stream.get_ref().1);
                    serve(&ctx, router, stream, peer, Some(cb), held).await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed"),
                Err(_) => debug!(%peer, "HTTPS handshake timed out"),
            }
        } else {
            serve(&ctx, router, tcp, peer, None, held).await;
        }
    });
}

/// Serves HTTP/1.1 requests on one connection until it closes, times out or the server stops.
async fn serve<S>(
    ctx: &Arc<HttpContext>,
    router: Router,
    stream: S,
    peer: SocketAddr,
    tls: Option<ChannelBindings>,
    held: Held,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = ctx.c2s.server.config();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Slow requests (slowloris): the whole header section within header_timeout. Between
        // keep-alive requests the same timer bounds the wait for the next one.
        .header_read_timeout(Duration::from_secs(config.http.header_timeout))
        .max_buf_size(config.http.max_header_bytes.max(8192))
        .keep_alive(true);
    let hold = Arc::new(Mutex::new(Some(held)));
    let secure_conn = tls.is_some();
    let cb = tls.unwrap_or_default();
    let sctx = ctx.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let (client, secure, proxied) =
                real_client(&sctx.c2s.server.config(), req.headers(), peer, secure_conn);
            req.extensions_mut().insert(ConnInfo {
                peer,
                client,
                secure,
                // Through a proxy the TLS here is the proxy's, not the client's: binding to it
                // would make the client's SCRAM-PLUS fail (or look like a downgrade).
                cb: if proxied {
                    ChannelBindings::default()
                } else {
                    cb.clone()
                },
                hold: hold.clone(),
            });
            router.oneshot(req.map(Body::new))
        });
    drop(config);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stop = ctx.c2s.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        Ok(()) = async { stop.wait_for(|down| *down).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

fn is_trusted(config: &canto_core::Config, ip: IpAddr) -> bool {
    config
        .http
        .trusted_proxies
        .iter()
        .filter_map(|r| parse_cidr(r).ok())
        .any(|(net, len)| cidr_contains(net, len, ip))
}

/// The real client behind trusted proxies and whether it used HTTPS. Only a trusted peer's
/// forwarding headers count; the chain is read from the right (the nearest hop), skipping
/// trusted proxies, so a client cannot pose as another address by sending the header itself
/// (RFC 7239 §8.1). `Forwarded` (RFC 7239 §4) wins over `X-Forwarded-For`. The third value:
/// the request came through a trusted proxy (a trusted peer that sent forwarding headers; a
/// client on a trusted address that sends none is served as itself).
pub fn real_client(
    config: &canto_core::Config,
    headers: &HeaderMap,
    peer: SocketAddr,
    tls: bool,
) -> (SocketAddr, bool, bool) {
    if !is_trusted(config, peer.ip()) {
        return (peer, tls, false);
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    let mut proto: Option<String> = None;
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let mut for_ip = None;
            let mut el_proto = None;
            for pair in element.split(';') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => for_ip = Some(parse_node(v)),
                    "proto" => el_proto = Some(v.to_ascii_lowercase()),
                    _ => {}
                }
            }
            if let Some(ip) = for_ip {
                hops.push(ip);
            }
            // Only the element the nearest (trusted) proxy appended tells how the request
            // reached it: an earlier one is whatever the client wrote.
            proto = el_proto;
        }
    } else {
        for v in headers.get_all("x-forwarded-for").iter() {
            let Ok(v) = v.to_str() else { continue };
            hops.extend(v.split(',').map(|h| parse_node(h.trim())));
        }
        // The last value is the nearest proxy's (earlier ones may be the client's own).
        proto = headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .map(|v| v.trim().to_ascii_lowercase());
    }
    let secure = tls || proto.as_deref() == Some("https");
    let mut client = peer.ip();
    for hop in hops.iter().rev() {
        // An obfuscated or unknown hop (RFC 7239 §6) ends the chain we can follow.
        let Some(ip) = hop else { break };
        client = *ip;
        if !is_trusted(config, *ip) {
            break;
        }
    }
    let proxied = !hops.is_empty() || proto.is_some();
    (SocketAddr::new(client, 0), secure, proxied)
}

/// An RFC 7239 §6 node (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`) or an
/// `X-Forwarded-For` entry; `None` for `unknown` and obfuscated identifiers.
fn parse_node(v: &str) -> Option<IpAddr> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.rsplit_once(':')?.0.parse().ok()
}

/// The routes. The paths are contracts (issue 13): `/xmpp-websocket`, `/http-bind`,
/// `/.well-known/host-meta`, `/.well-known/host-meta.json`, and `/upload/` for files.
fn routes(ctx: Arc<HttpContext>) -> Router {
    Router::new()
        .route("/xmpp-websocket", any(websocket::handle))
        .route("/http-bind", any(bosh::handle))
        .route("/http-bind/", any(bosh::handle))
        .route("/.well-known/host-meta", get(hostmeta::xml))
        .route("/.well-known/host-meta.json", get(hostmeta::json))
        .route("/upload/{id}/{name}", any(upload::handle))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), cors))
        .with_state(ctx)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// CORS (the Fetch standard) for browsers on other origins: a preflight `OPTIONS` is answered
/// here; other responses get the allow headers when the origin is allowed.
async fn cors(
    axum::extract::State(ctx): axum::extract::State<Arc<HttpContext>>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| {
        let config = ctx.c2s.server.config();
        let list = &config.http.cors_origins;
        if list.iter().any(|a| a == "*") {
            Some(HeaderValue::from_static("*"))
        } else {
            let o = o.to_str().ok()?;
            list.iter()
                .any(|a| a.eq_ignore_ascii_case(o))
                .then(|| HeaderValue::from_str(o).ok())
                .flatten()
        }
    });
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(a) = allowed {
        let h = resp.headers_mut();
        let specific = a != "*";
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
        if specific {
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, POST, PUT, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, Authorization"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let config = canto_core::Config::default();
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!());
        let outsider: SocketAddr = "198.51.100.7:40000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let (c, secure, _) = real_client(&config, &h, proxy, false);
        assert_eq!(c.ip().to_string(), "203.0.113.9");
        assert!(secure);
        // An untrusted peer's headers are ignored.
        let (c, secure, _) = real_client(&config, &h, outsider, false);
        assert_eq!(c.ip(), outsider.ip());
        assert!(!secure);
        // A forged left-most entry does not win: the nearest untrusted hop does.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 203.0.113.9, 127.0.0.1")]);
        assert_eq!(
            real_client(&config, &h, proxy, false).0.ip().to_string(),
            "203.0.113.9"
        );
        // RFC 7239: quoted IPv6 with a port; Forwarded wins over X-Forwarded-For.
        let h = headers(&[
            ("forwarded", "for=\"[2001:db8:cafe::17]:4711\";proto=https"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let (c, secure, _) = real_client(&config, &h, proxy, false);
        assert_eq!(c.ip().to_string(), "2001:db8:cafe::17");
        assert!(secure);
        // A scheme the client claimed in an earlier element does not count.
        let h = headers(&[("forwarded", "for=203.0.113.9;proto=https, for=203.0.113.9")]);
        assert!(!real_client(&config, &h, proxy, false).1);
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ]);
        assert!(!real_client(&config, &h, proxy, false).1);
        // An obfuscated hop ends the chain at the proxy itself.
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(real_client(&config, &h, proxy, false).0.ip(), proxy.ip());
    }
}

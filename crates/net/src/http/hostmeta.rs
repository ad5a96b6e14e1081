//! XEP-0156 §3: `/.well-known/host-meta` (XRD, RFC 6415) and `/.well-known/host-meta.json`
//! (JRD) list this server's WebSocket and BOSH endpoints, so a web client given only a JID's
//! domain finds where to connect.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canto_xml::escape;

use super::{ConnInfo, HttpContext};

/// XEP-0156 §3.3 link relations.
const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
const REL_BOSH: &str = "urn:xmpp:alt-connections:xbosh";

/// The endpoints for a request: from `http.external_url` when set, else from the `Host` the
/// client asked for and the scheme it used (a trusted proxy's `X-Forwarded-Proto` included).
fn endpoints(ctx: &HttpContext, headers: &HeaderMap, info: &ConnInfo) -> Option<(String, String)> {
    let config = ctx.c2s.server.config();
    let base = if config.http.external_url.is_empty() {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        // A Host header is a host and an optional port, nothing else.
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return None;
        }
        let scheme = if info.secure { "https" } else { "http" };
        format!("{scheme}://{host}")
    } else {
        config.http.external_url.trim_end_matches('/').to_string()
    };
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/xmpp-websocket")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/xmpp-websocket")
    } else {
        return None;
    };
    Some((ws, format!("{base}/http-bind")))
}

fn reply(content_type: &'static str, body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Discovery is public and changes rarely.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// `GET /.well-known/host-meta`: XRD (RFC 6415 §3).
pub(super) async fn xml(
    State(ctx): State<Arc<HttpContext>>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let Some((ws, bosh)) = endpoints(&ctx, &headers, &info) else {
        return (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response();
    };
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  \
         <Link rel='{REL_BOSH}' href='{}'/>\n  \
         <Link rel='{REL_WEBSOCKET}' href='{}'/>\n\
         </XRD>\n",
        escape(&bosh),
        escape(&ws)
    );
    reply("application/xrd+xml", body)
}

/// `GET /.well-known/host-meta.json`: JRD (RFC 6415 appendix A).
pub(super) async fn json(
    State(ctx): State<Arc<HttpContext>>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let Some((ws, bosh)) = endpoints(&ctx, &headers, &info) else {
        return (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response();
    };
    // The URLs are ASCII without quotes or backslashes (the Host check above, or a configured
    // URL checked at load), so they need no JSON escaping beyond what `{:?}` gives.
    let body = format!(
        "{{\"links\":[{{\"rel\":\"{REL_BOSH}\",\"href\":{bosh:?}}},{{\"rel\":\"{REL_WEBSOCKET}\",\"href\":{ws:?}}}]}}\n"
    );
    reply("application/json", body)
}

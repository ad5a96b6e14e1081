//! Outgoing server streams: one task per (local domain, remote domain) pair. It resolves the
//! remote domain (SRV, XEP-0368), connects (happy eyeballs), secures the stream (STARTTLS or
//! direct TLS), checks the peer's certificate, authenticates (SASL EXTERNAL, else dialback),
//! then writes what is queued until the stream goes idle or ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use canto_proto::s2s::{self as proto, PeerFeatures};
use canto_stanza::{Condition, StreamCondition, StreamError, ns};
use canto_xml::{Element, StreamEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::stream::{ReadFail, S2sIo, XmlConn};
use super::{Queued, S2s, dns};

/// Why setting up a stream failed, and the error its queued stanzas get.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub(crate) condition: Condition,
    pub(crate) reason: String,
}

fn fail(condition: Condition, reason: impl Into<String>) -> SetupError {
    SetupError {
        condition,
        reason: reason.into(),
    }
}

/// A secured stream to a peer, before authentication: the stream id the peer gave and the
/// features it offers.
pub(crate) struct Opened {
    pub(crate) conn: XmlConn,
    pub(crate) id: String,
    pub(crate) features: PeerFeatures,
    /// The peer's certificate is valid for the remote domain.
    pub(crate) cert_ok: bool,
    /// XEP-0288: we asked for a bidirectional stream.
    pub(crate) bidi: bool,
}

/// The route task: set up, then serve; stanzas left when it ends are bounced or requeued.
pub(crate) async fn run(
    s2s: Arc<S2s>,
    local: String,
    remote: String,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
) {
    let timeout = Duration::from_secs(s2s.config().s2s.connect_timeout);
    let started = Instant::now();
    let setup = tokio::time::timeout(timeout, establish(&s2s, &local, &remote)).await;
    let conn = match setup {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            warn!(%local, %remote, reason = %e.reason, "s2s: outgoing connection failed");
            return drain(&s2s, &local, &remote, rx, &queued, e.condition);
        }
        Err(_) => {
            warn!(%local, %remote, "s2s: outgoing connection timed out");
            // RFC 6120 §8.3.3.17
            return drain(
                &s2s,
                &local,
                &remote,
                rx,
                &queued,
                Condition::RemoteServerTimeout,
            );
        }
    };
    info!(%local, %remote, ms = started.elapsed().as_millis() as u64, "s2s: outgoing stream authenticated");
    let _gauge = canto_core::metrics::connection("s2s_out");
    let left = serve(&s2s, &local, &remote, conn, &mut rx, &queued).await;
    debug!(%local, %remote, "s2s: outgoing stream ended");
    s2s.remove_route(&local, &remote, &queued);
    rx.close();
    let mut rest = left;
    while let Ok(q) = rx.try_recv() {
        rest.push(q);
    }
    if *s2s.shutdown.borrow() {
        return;
    }
    if !rest.is_empty() {
        s2s.requeue(&local, &remote, rest);
    }
}

/// The setup failed: forget the route, then bounce everything queued for it.
fn drain(
    s2s: &S2s,
    local: &str,
    remote: &str,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    queued: &Arc<AtomicUsize>,
    cond: Condition,
) {
    // Removed before closing: a stanza sent from now on makes a new route.
    s2s.remove_route(local, remote, queued);
    rx.close();
    while let Ok(item) = rx.try_recv() {
        queued.fetch_sub(item.bytes.len(), Ordering::Relaxed);
        s2s.bounce(item, cond);
    }
}

/// Writes queued stanzas and reads what the peer sends (errors, a close) until the stream ends,
/// goes idle (`s2s.idle_timeout`) or the server shuts down. Returns stanzas taken from the
/// queue but not written.
async fn serve(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    opened: Opened,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    queued: &AtomicUsize,
) -> Vec<Queued> {
    let idle = Duration::from_secs(s2s.config().s2s.idle_timeout);
    let mut stop = s2s.shutdown.clone();
    let mut out = Vec::with_capacity(4096);
    let Opened {
        mut conn,
        id,
        cert_ok,
        bidi,
        ..
    } = opened;
    // XEP-0288 §3: on a bidirectional stream the peer may send to us once it has proved its
    // domain: by dialback on this stream (its key checked by a callback to its authoritative
    // server, or accepted at once when its certificate is valid, XEP-0344).
    // Bidi is asked for only of a peer whose certificate verified: that proved it (XEP-0288 §3,
    // as Prosody's mod_s2s_bidi assumes).
    let mut peer_proved = bidi && cert_ok;
    if peer_proved {
        s2s.authenticated(remote, "bidi");
    }
    let (vtx, mut vrx) = mpsc::channel::<bool>(1);
    loop {
        let idle_at = conn.last_activity + idle;
        tokio::select! {
            q = rx.recv() => {
                let Some(first) = q else {
                    conn.close().await;
                    return Vec::new();
                };
                // Everything queued goes out in one write.
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(q) => batch.push(q),
                        Err(_) => break,
                    }
                }
                out.clear();
                for q in &batch {
                    out.extend_from_slice(&q.bytes);
                }
                if conn.write(&out).await.is_err() {
                    // Not known to have arrived: sent again on a new stream.
                    for q in &batch {
                        queued.fetch_sub(q.bytes.len(), Ordering::Relaxed);
                    }
                    return batch;
                }
                for q in &batch {
                    queued.fetch_sub(q.bytes.len(), Ordering::Relaxed);
                }
            }
            ev = conn.next() => match ev {
                Ok(StreamEvent::Close) => {
                    conn.close().await;
                    return Vec::new();
                }
                Ok(StreamEvent::Stanza(el)) if el.is("error", ns::STREAMS) => {
                    warn!(error = ?el.children().next().map(|c| c.name().to_string()), "s2s: stream error from peer");
                    conn.close().await;
                    return Vec::new();
                }
                Ok(StreamEvent::Stanza(el)) if bidi && el.is("result", proto::NS_DIALBACK) && el.attr("type").is_none() => {
                    let from_ok = el.attr("from").is_some_and(|f| f.eq_ignore_ascii_case(remote));
                    let to_ok = el.attr("to").is_some_and(|t| t.eq_ignore_ascii_case(local));
                    if !from_ok || !to_ok {
                        conn.fail(StreamError::new(StreamCondition::InvalidFrom)).await;
                        return Vec::new();
                    }
                    if cert_ok {
                        let _ = vtx.try_send(true);
                    } else if s2s.config().s2s.requires_certificate(remote) {
                        let _ = vtx.try_send(false);
                    } else {
                        let (s2s, local, remote, id, vtx) = (s2s.clone(), local.to_string(), remote.to_string(), id.clone(), vtx.clone());
                        let key = el.text();
                        tokio::spawn(async move {
                            let ok = verify_key(&s2s, &local, &remote, &id, key.trim()).await.unwrap_or(false);
                            let _ = vtx.send(ok).await;
                        });
                    }
                }
                Ok(StreamEvent::Stanza(el)) if bidi && matches!(el.name(), "message" | "presence" | "iq") && el.ns() == ns::SERVER => {
                    // RFC 6120 §4.9.3.9 / XEP-0288 §3: only what the peer proved, to us.
                    let from_ok = el.attr("from").and_then(|f| canto_stanza::parse_jid(f).ok()).is_some_and(|j| j.domain().as_str().eq_ignore_ascii_case(remote));
                    let to_ok = el.attr("to").and_then(|t| canto_stanza::parse_jid(t).ok()).is_some_and(|j| j.domain().as_str().eq_ignore_ascii_case(local));
                    if !peer_proved || !from_ok {
                        let cond = if peer_proved { StreamCondition::InvalidFrom } else { StreamCondition::NotAuthorized };
                        conn.fail(StreamError::new(cond)).await;
                        return Vec::new();
                    }
                    if !to_ok {
                        conn.fail(StreamError::new(StreamCondition::HostUnknown)).await;
                        return Vec::new();
                    }
                    let mut el = el;
                    canto_core::remote::from_server_namespace(&mut el);
                    s2s.server.route_from_remote(remote, el).await;
                }
                // Nothing else is expected on an outgoing stream: ignored.
                Ok(_) => {}
                Err(ReadFail::Stream(e)) => {
                    conn.fail(e).await;
                    return Vec::new();
                }
                Err(ReadFail::Gone(_)) => return Vec::new(),
            },
            Some(valid) = vrx.recv() => {
                let answer = proto::db_answer("result", local, remote, None, valid);
                if conn.send(&answer).await.is_err() {
                    return Vec::new();
                }
                if valid {
                    info!(%local, %remote, "s2s: the peer may send on our stream (XEP-0288)");
                    s2s.authenticated(remote, "dialback");
                    peer_proved = true;
                } else {
                    conn.fail(StreamError::new(StreamCondition::NotAuthorized)).await;
                    return Vec::new();
                }
            }
            _ = tokio::time::sleep_until(idle_at) => {
                debug!("s2s: idle outgoing stream closed");
                conn.close().await;
                return Vec::new();
            }
            _ = stop.changed() => {
                conn.fail(StreamError::new(StreamCondition::SystemShutdown)).await;
                return Vec::new();
            }
        }
    }
}

/// Resolves, connects, secures and authenticates a stream from `local` to `remote`.
async fn establish(s2s: &Arc<S2s>, local: &str, remote: &str) -> Result<Opened, SetupError> {
    let mut opened = open(s2s, local, remote).await?;
    debug!(%remote, cert_ok = opened.cert_ok, "s2s: outgoing stream secured");
    authenticate(s2s, local, remote, &mut opened).await?;
    Ok(opened)
}

/// Connects to the first target of `remote` that answers and opens a secured stream
/// (`see-other-host` is followed once, RFC 6120 §4.9.3.19).
pub(crate) async fn open(s2s: &Arc<S2s>, local: &str, remote: &str) -> Result<Opened, SetupError> {
    let targets = dns::targets(&*s2s.resolver, remote)
        .await
        .map_err(|e| fail(Condition::RemoteServerNotFound, format!("DNS: {e}")))?;
    let mut last = fail(Condition::RemoteServerNotFound, "no address answered");
    for t in &targets {
        match open_target(s2s, local, remote, t, true).await {
            Ok(o) => return Ok(o),
            Err(e) => {
                debug!(%remote, host = %t.host, port = t.port, reason = %e.reason, "s2s: target failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn open_target(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    target: &dns::Target,
    follow_redirect: bool,
) -> Result<Opened, SetupError> {
    let (tcp, _addr) = dns::connect(&*s2s.resolver, target, Duration::from_millis(250))
        .await
        .map_err(|e| fail(Condition::RemoteServerNotFound, format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    s2s.connects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = s2s.config();
    let max = config.s2s.max_stanza_size;
    let require_tls = config.s2s.require_encryption;
    let needs_cert = config.s2s.requires_certificate(remote);
    drop(config);
    let mut conn = XmlConn::new(S2sIo::Plain(tcp), max, s2s.read_limit());
    let deadline = Instant::now() + Duration::from_secs(s2s.config().s2s.connect_timeout);
    let client_tls = super::verify::client_config(&s2s.certs, local, target.direct_tls);
    if target.direct_tls {
        // XEP-0368 §3: TLS first, ALPN xmpp-server.
        conn.connect_tls(client_tls.clone(), remote, deadline)
            .await
            .map_err(|e| fail(Condition::RemoteServerNotFound, e))?;
    }
    loop {
        conn.write(&proto::stream_header(local, remote, None))
            .await
            .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
        let header = next_element(&mut conn, true).await?;
        if header.ns() != ns::STREAMS || header.attr("xmlns") != Some(ns::SERVER) {
            conn.fail(StreamError::new(StreamCondition::InvalidNamespace))
                .await;
            return Err(fail(
                Condition::RemoteServerNotFound,
                "not an XMPP server stream",
            ));
        }
        let id = header.attr("id").unwrap_or_default().to_string();
        if header.attr("version").is_none() {
            // Pre-1.0 servers (no features, no TLS) are not spoken to.
            conn.close().await;
            return Err(fail(
                Condition::RemoteServerNotFound,
                "peer does not speak XMPP 1.0",
            ));
        }
        let features = next_element(&mut conn, false).await?;
        if features.is("error", ns::STREAMS) {
            if follow_redirect
                && let Some(host) = features
                    .get_child("see-other-host", ns::STREAM_ERRORS)
                    .map(|h| h.text())
            {
                // RFC 6120 §4.9.3.19: reconnect to the host named, once.
                let (h, p) = split_host_port(&host);
                let t = dns::Target {
                    host: h,
                    port: p.unwrap_or(target.port),
                    direct_tls: target.direct_tls,
                    secure: false,
                };
                conn.close().await;
                return Box::pin(open_target(s2s, local, remote, &t, false)).await;
            }
            return Err(fail(
                Condition::RemoteServerNotFound,
                "stream error from peer",
            ));
        }
        if !features.is("features", ns::STREAMS) {
            conn.fail(StreamError::new(StreamCondition::InvalidXml))
                .await;
            return Err(fail(
                Condition::RemoteServerNotFound,
                "expected stream features",
            ));
        }
        let pf = PeerFeatures::parse(&features);
        if !conn.is_tls() {
            if pf.starttls {
                // RFC 6120 §5.4.2
                conn.send(&Element::new("starttls", ns::TLS))
                    .await
                    .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
                let answer = next_element(&mut conn, false).await?;
                if !answer.is("proceed", ns::TLS) {
                    return Err(fail(Condition::RemoteServerNotFound, "STARTTLS refused"));
                }
                conn.connect_tls(client_tls.clone(), remote, deadline)
                    .await
                    .map_err(|e| fail(Condition::RemoteServerNotFound, e))?;
                continue;
            }
            if require_tls || needs_cert {
                conn.fail(
                    StreamError::new(StreamCondition::PolicyViolation).with_text("TLS required"),
                )
                .await;
                return Err(fail(Condition::RemoteServerNotFound, "peer offers no TLS"));
            }
        }
        let chain = conn.peer_chain();
        let mut cert_ok = !chain.is_empty() && s2s.verifier.verify(&chain, remote).is_ok();
        if s2s.config().dns.dane
            && conn.is_tls()
            && let Some(tlsa) = dns::tlsa_for(&*s2s.resolver, target).await
        {
            let records: Vec<super::verify::TlsaRecord> = tlsa
                .into_iter()
                .map(|t| (t.usage, t.selector, t.matching, t.data))
                .collect();
            // RFC 7671 §4.1: usable TLSA records decide, without falling back to the PKI;
            // unusable ones are as if absent. RFC 7673 §4: the reference names are the source
            // domain and the SRV target.
            if super::verify::dane_usable(&records) {
                cert_ok = super::verify::dane_matches(&chain, &[remote, &target.host], &records);
                if !cert_ok {
                    conn.fail(StreamError::new(StreamCondition::PolicyViolation))
                        .await;
                    return Err(fail(
                        Condition::RemoteServerNotFound,
                        "the certificate does not match the DANE-TLSA records",
                    ));
                }
            }
        }
        if needs_cert && !cert_ok {
            // s2s.secure_auth (Prosody's s2s_secure_auth): no valid certificate, no stream.
            conn.fail(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("your certificate is not valid for your domain"),
            )
            .await;
            return Err(fail(
                Condition::RemoteServerNotFound,
                "the peer's certificate is not valid",
            ));
        }
        return Ok(Opened {
            conn,
            id,
            features: pf,
            cert_ok,
            bidi: false,
        });
    }
}

/// Authenticates `local` to the peer: SASL EXTERNAL when offered (RFC 6120 §6.3.4,
/// XEP-0178), else or after its failure dialback (XEP-0220 §2.1).
async fn authenticate(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    o: &mut Opened,
) -> Result<(), SetupError> {
    if o.features.bidi && o.cert_ok && s2s.config().s2s.bidi {
        // XEP-0288 §2: asked for after TLS, before authentication; only of a peer whose
        // certificate verified, so what it sends back on the stream is proved (§3). Without
        // that, a peer that verifies our dialback key over its own route to us — the stream
        // being authenticated, once bidirectional — would wait for itself (Prosody does).
        o.conn
            .send(&Element::new("bidi", proto::NS_BIDI))
            .await
            .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
        o.bidi = true;
    }
    if o.features.external && o.conn.is_tls() {
        o.conn
            .send(&proto::external_auth(local))
            .await
            .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
        let answer = next_element(&mut o.conn, false).await?;
        if answer.is("success", ns::SASL) {
            // RFC 6120 §6.4.6: a new stream.
            o.conn.restart();
            o.conn
                .write(&proto::stream_header(local, remote, None))
                .await
                .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
            let header = next_element(&mut o.conn, true).await?;
            // The new stream's id (a dialback key on a bidirectional stream names it).
            o.id = header.attr("id").unwrap_or_default().to_string();
            let _features = next_element(&mut o.conn, false).await?;
            return Ok(());
        }
        debug!(%remote, "s2s: SASL EXTERNAL refused; trying dialback");
        if !o.features.dialback {
            return Err(fail(
                Condition::RemoteServerNotFound,
                "SASL EXTERNAL refused",
            ));
        }
    }
    if !o.features.dialback {
        o.conn.close().await;
        return Err(fail(
            Condition::RemoteServerNotFound,
            "no authentication method in common",
        ));
    }
    // XEP-0220 §2.1.1: the key for this stream, which only our authoritative side can check.
    let key = proto::dialback_key(&s2s.secret, remote, local, &o.id);
    o.conn
        .send(&proto::db_result(local, remote, &key))
        .await
        .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
    loop {
        let el = next_element(&mut o.conn, false).await?;
        if el.is("result", proto::NS_DIALBACK) {
            if el
                .attr("from")
                .is_some_and(|f| !f.eq_ignore_ascii_case(remote))
                || el
                    .attr("to")
                    .is_some_and(|t| !t.eq_ignore_ascii_case(local))
            {
                continue;
            }
            return match el.attr("type") {
                Some("valid") => Ok(()),
                _ => {
                    o.conn.close().await;
                    Err(fail(Condition::RemoteServerNotFound, "dialback refused"))
                }
            };
        }
        if el.is("error", ns::STREAMS) {
            return Err(fail(
                Condition::RemoteServerNotFound,
                "stream error during dialback",
            ));
        }
    }
}

/// The next element (or, with `header`, the next stream header) of a stream being set up.
async fn next_element(conn: &mut XmlConn, header: bool) -> Result<Element, SetupError> {
    match conn.next().await {
        Ok(StreamEvent::Header(h)) if header => Ok(h),
        Ok(StreamEvent::Stanza(e)) if !header => Ok(e),
        Ok(StreamEvent::Close) => Err(fail(
            Condition::RemoteServerNotFound,
            "peer closed the stream",
        )),
        Ok(_) => Err(fail(Condition::RemoteServerNotFound, "unexpected element")),
        Err(ReadFail::Stream(e)) => {
            conn.fail(e).await;
            Err(fail(Condition::RemoteServerNotFound, "bad XML from peer"))
        }
        Err(ReadFail::Gone(r)) => Err(fail(Condition::RemoteServerNotFound, r)),
    }
}

fn split_host_port(s: &str) -> (String, Option<u16>) {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (
            h.to_string(),
            p.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().ok()),
        _ => (s.to_string(), None),
    }
}

/// Asks `remote`'s authoritative server whether `key` is the dialback key it made for the
/// stream `stream_id` it opened to `local` (XEP-0220 §2.1.2), over a connection of its own.
pub(crate) async fn verify_key(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, SetupError> {
    let timeout = Duration::from_secs(s2s.config().s2s.connect_timeout);
    tokio::time::timeout(timeout, async {
        let mut o = open(s2s, local, remote).await?;
        o.conn
            .send(&proto::db_verify(local, remote, stream_id, key))
            .await
            .map_err(|_| fail(Condition::RemoteServerNotFound, "write failed"))?;
        loop {
            let el = next_element(&mut o.conn, false).await?;
            if el.is("verify", proto::NS_DIALBACK) && el.attr("id") == Some(stream_id) {
                let valid = el.attr("type") == Some("valid");
                o.conn.close().await;
                return Ok(valid);
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(fail(
            Condition::RemoteServerTimeout,
            "dialback verification timed out",
        ))
    })
}

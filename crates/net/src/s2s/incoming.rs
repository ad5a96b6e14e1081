//! Incoming server streams (RFC 6120 as the receiving entity): the header, STARTTLS, SASL
//! EXTERNAL with the peer's certificate, dialback (XEP-0220: results checked with the
//! originating domain's authoritative server, verification requests answered from our own
//! secret), then stanzas — each must come from a domain this stream authenticated and go to
//! a domain served here, or the stream is closed (RFC 6120 §4.9.3.9 `invalid-from`,
//! §4.9.3.6 `host-unknown`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use canto_proto::s2s::{self as proto, Offer};
use canto_stanza::{StreamCondition, StreamError, ns, parse_jid};
use canto_xml::{Element, StreamEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::S2s;
use super::stream::{ReadFail, S2sIo, XmlConn};

/// What a dialback verification found, sent back to the stream's task.
struct Verdict {
    remote: String,
    local: String,
    valid: bool,
    /// The authoritative server could not be asked (XEP-0220 §2.4: an error, not invalid).
    unreachable: bool,
}

/// Serves one incoming connection until it ends.
pub(crate) async fn serve(s2s: Arc<S2s>, io: S2sIo, peer: String, direct_tls: bool) {
    let config = s2s.config();
    let max = config.s2s.max_stanza_size;
    let negotiation = Duration::from_secs(config.s2s.connect_timeout.max(10));
    drop(config);
    let mut conn = XmlConn::new(io, max, s2s.read_limit());
    let tls_available = matches!(conn.io, S2sIo::Plain(_));
    if direct_tls {
        // XEP-0368 §3: TLS before the stream.
        let cfg = super::verify::server_config(&s2s.certs);
        if conn
            .accept_tls(cfg, Instant::now() + negotiation)
            .await
            .is_err()
        {
            return;
        }
    }
    let _gauge = canto_core::metrics::connection("s2s_in");
    let mut st = State {
        s2s: s2s.clone(),
        peer,
        id: String::new(),
        local: String::new(),
        claimed: None,
        pairs: HashSet::new(),
        counted: Vec::new(),
        attempts: 0,
        tls_available,
        sasl_done: false,
        opened: false,
        bidi_requested: false,
        header_sent: false,
        bidi: Bidi::Off,
    };
    let (tx, mut rx) = mpsc::channel::<Verdict>(16);
    let result = st.run(&mut conn, tx, &mut rx).await;
    if let Err(e) = result {
        if !st.header_sent {
            // RFC 6120 §4.9.1.2: an error before the stream is set up still follows our
            // stream header (found by the s2s fuzz target).
            let header = proto::stream_header(&st.local, "", Some(&random_id()));
            let _ = conn.write(&header).await;
        }
        conn.fail(e).await;
    }
    if let Bidi::Active {
        local,
        remote,
        mut rx,
        queued,
    } = std::mem::replace(&mut st.bidi, Bidi::Done)
    {
        // The stream was a route: what is left goes on a new one.
        s2s.remove_route(&local, &remote, &queued);
        rx.close();
        let mut left = Vec::new();
        while let Ok(q) = rx.try_recv() {
            left.push(q);
        }
        if !left.is_empty() && !*s2s.shutdown.borrow() {
            s2s.requeue(&local, &remote, left);
        }
    }
    for d in &st.counted {
        s2s.incoming_release(d);
    }
    debug!(peer = %st.peer, "s2s: incoming stream ended");
}

struct State {
    s2s: Arc<S2s>,
    peer: String,
    /// The current stream's id (a new one after each restart).
    id: String,
    /// The local domain the header named.
    local: String,
    /// The domain the header's `from` claimed.
    claimed: Option<String>,
    /// (remote, local) pairs this stream authenticated (XEP-0220 §2.1.3 lets one stream carry
    /// several: piggybacking).
    pairs: HashSet<(String, String)>,
    /// Remote domains counted against `s2s.max_connections_per_domain`.
    counted: Vec<String>,
    /// Dialback requests made on this stream (`s2s.max_dialback_attempts`).
    attempts: u32,
    tls_available: bool,
    sasl_done: bool,
    opened: bool,
    /// XEP-0288: the peer asked for a bidirectional stream.
    bidi_requested: bool,
    /// Our stream header for the current stream is out.
    header_sent: bool,
    /// XEP-0288: our side of it.
    bidi: Bidi,
}

/// Our use of a bidirectional stream (XEP-0288 §3): it carries our stanzas for the peer.
enum Bidi {
    Off,
    /// The stream is the route for (local, remote).
    Active {
        local: String,
        remote: String,
        rx: mpsc::UnboundedReceiver<super::Queued>,
        queued: Arc<std::sync::atomic::AtomicUsize>,
    },
    /// Another route existed: stanzas go the usual way.
    Done,
}

impl State {
    async fn run(
        &mut self,
        conn: &mut XmlConn,
        tx: mpsc::Sender<Verdict>,
        rx: &mut mpsc::Receiver<Verdict>,
    ) -> Result<(), StreamError> {
        let config = self.s2s.config();
        let idle = Duration::from_secs(config.s2s.idle_timeout);
        let negotiation = Duration::from_secs(config.s2s.connect_timeout.max(10));
        drop(config);
        let started = Instant::now();
        let mut stop = self.s2s.shutdown.clone();
        loop {
            // Until a pair is authenticated, the stream has `connect_timeout` to get there.
            let deadline = if self.pairs.is_empty() {
                started + negotiation
            } else {
                conn.last_activity + idle
            };
            let bidi_rx = async {
                match &mut self.bidi {
                    Bidi::Active { rx, .. } => rx.recv().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                q = bidi_rx => {
                    if let Some(q) = q {
                        self.write_bidi(conn, q).await?;
                    }
                }
                ev = conn.next() => match ev {
                    Ok(StreamEvent::Header(h)) => self.header(conn, &h).await?,
                    Ok(StreamEvent::Stanza(el)) => {
                        if !self.opened {
                            return Err(StreamError::new(StreamCondition::InvalidXml));
                        }
                        if self.element(conn, el, &tx).await? {
                            // A stream restart follows (STARTTLS, SASL).
                            continue;
                        }
                    }
                    Ok(StreamEvent::Close) => {
                        conn.close().await;
                        return Ok(());
                    }
                    Err(ReadFail::Stream(e)) => return Err(e),
                    Err(ReadFail::Gone(_)) => return Ok(()),
                },
                Some(v) = rx.recv() => self.verdict(conn, v).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    if self.pairs.is_empty() {
                        return Err(StreamError::new(StreamCondition::ConnectionTimeout));
                    }
                    conn.close().await;
                    return Ok(());
                }
                _ = stop.changed() => return Err(StreamError::new(StreamCondition::SystemShutdown)),
            }
        }
    }

    /// A stream header: RFC 6120 §4.7 checks, our header, the features.
    async fn header(&mut self, conn: &mut XmlConn, h: &Element) -> Result<(), StreamError> {
        // RFC 6120 §4.9.3.10
        if h.ns() != ns::STREAMS || h.name() != "stream" {
            return Err(StreamError::new(StreamCondition::InvalidNamespace));
        }
        if h.attr("xmlns") != Some(ns::SERVER) {
            return Err(StreamError::new(StreamCondition::InvalidNamespace)
                .with_text("the content namespace must be jabber:server"));
        }
        // RFC 6120 §4.9.3.6: a domain we serve, whatever it was before a restart.
        let to = h
            .attr("to")
            .and_then(canto_stanza::jid::normalize_domain)
            .filter(|d| self.s2s.is_local(d))
            .ok_or_else(|| StreamError::new(StreamCondition::HostUnknown))?;
        let from = match h.attr("from") {
            None => None,
            Some(f) => Some(
                canto_stanza::jid::normalize_domain(f)
                    .ok_or_else(|| StreamError::new(StreamCondition::InvalidFrom))?,
            ),
        };
        // RFC 6120 §4.7.5: version 1.0, or features cannot be offered.
        let major = h.attr("version").and_then(|v| v.split('.').next());
        if major != Some("1") {
            return Err(StreamError::new(StreamCondition::UnsupportedVersion));
        }
        self.local = to;
        self.claimed = from;
        self.id = random_id();
        self.opened = true;
        let mut out = proto::stream_header(
            &self.local,
            self.claimed.as_deref().unwrap_or(""),
            Some(&self.id),
        );
        let config = self.s2s.config();
        let tls = conn.is_tls();
        let starttls = (!tls && self.tls_available).then_some(config.s2s.require_encryption);
        let usable = tls || !config.s2s.require_encryption;
        let external = usable
            && !self.sasl_done
            && tls
            && self
                .claimed
                .as_ref()
                .is_some_and(|d| self.cert_valid(conn, d));
        let offer = Offer {
            starttls,
            external,
            dialback: usable,
            // XEP-0288 §2: before authentication.
            bidi: usable && config.s2s.bidi && self.pairs.is_empty(),
        };
        drop(config);
        proto::features(offer).write_to(&mut out, ns::CLIENT);
        conn.write(&out)
            .await
            .map_err(|_| StreamError::new(StreamCondition::UndefinedCondition))?;
        self.header_sent = true;
        // After SASL's restart: our half of a bidirectional stream starts now.
        self.start_bidi(conn).await
    }

    /// XEP-0288 §3: once the peer is authenticated on a stream it made bidirectional, the
    /// stream is our route to it too.
    async fn start_bidi(&mut self, conn: &mut XmlConn) -> Result<(), StreamError> {
        if !self.bidi_requested || !matches!(self.bidi, Bidi::Off) || !self.s2s.config().s2s.bidi {
            return Ok(());
        }
        let Some((remote, local)) = self.pairs.iter().next().cloned() else {
            return Ok(());
        };
        let _ = conn;
        // The initiating server authenticates us as it chose to when it asked (our
        // certificate, or the DNS it found us by, the trust dialback gives): we send on its
        // stream at once, as Prosody's mod_s2s_bidi does (it refuses a <db:result/> here).
        self.bidi = match self.s2s.attach_route(&local, &remote) {
            Some((rx, queued)) => {
                info!(%local, %remote, "s2s: our stanzas go on the peer's stream (XEP-0288)");
                Bidi::Active {
                    local,
                    remote,
                    rx,
                    queued,
                }
            }
            None => Bidi::Done,
        };
        Ok(())
    }

    /// Writes stanzas of our route on the bidirectional stream, batched.
    async fn write_bidi(
        &mut self,
        conn: &mut XmlConn,
        first: super::Queued,
    ) -> Result<(), StreamError> {
        let Bidi::Active { rx, queued, .. } = &mut self.bidi else {
            return Ok(());
        };
        let mut out = first.bytes;
        let mut n = out.len();
        while let Ok(q) = rx.try_recv() {
            n += q.bytes.len();
            out.extend_from_slice(&q.bytes);
            if out.len() > 64 * 1024 {
                break;
            }
        }
        queued.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        conn.write(&out)
            .await
            .map_err(|_| StreamError::new(StreamCondition::UndefinedCondition))
    }

    fn cert_valid(&self, conn: &XmlConn, domain: &str) -> bool {
        let chain = conn.peer_chain();
        !chain.is_empty() && self.s2s.verifier.verify(&chain, domain).is_ok()
    }

    /// One top-level element. Returns true when a stream restart follows.
    async fn element(
        &mut self,
        conn: &mut XmlConn,
        el: Element,
        tx: &mpsc::Sender<Verdict>,
    ) -> Result<bool, StreamError> {
        let write_err = |_| StreamError::new(StreamCondition::UndefinedCondition);
        if el.is("starttls", ns::TLS) {
            if conn.is_tls() || !self.tls_available {
                // RFC 6120 §5.4.2.2
                conn.send(&Element::new("failure", ns::TLS))
                    .await
                    .map_err(write_err)?;
                conn.close().await;
                return Err(StreamError::new(StreamCondition::PolicyViolation));
            }
            conn.send(&Element::new("proceed", ns::TLS))
                .await
                .map_err(write_err)?;
            let cfg = super::verify::server_config(&self.s2s.certs);
            let deadline = Instant::now() + Duration::from_secs(10);
            if conn.accept_tls(cfg, deadline).await.is_err() {
                return Err(StreamError::new(StreamCondition::UndefinedCondition));
            }
            self.opened = false;
            self.header_sent = false;
            return Ok(true);
        }
        if self.s2s.config().s2s.require_encryption && !conn.is_tls() {
            // RFC 6120 §5.3.1: nothing but STARTTLS before TLS when it is required.
            return Err(
                StreamError::new(StreamCondition::PolicyViolation).with_text("TLS is required")
            );
        }
        if el.is("auth", ns::SASL) {
            return self.sasl_external(conn, &el).await;
        }
        if el.is("bidi", proto::NS_BIDI) {
            // XEP-0288 §2: only before authentication, and only where offered.
            if !self.pairs.is_empty() || !self.s2s.config().s2s.bidi {
                return Err(StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("bidi is requested before authentication"));
            }
            self.bidi_requested = true;
            return Ok(false);
        }
        if el.is("result", proto::NS_DIALBACK) {
            self.dialback_result(conn, &el, tx).await?;
            return Ok(false);
        }
        if el.is("verify", proto::NS_DIALBACK) {
            self.dialback_verify(conn, &el).await?;
            return Ok(false);
        }
        self.stanza(el).await?;
        Ok(false)
    }

    /// RFC 6120 §6.4 with EXTERNAL (§6.3.4, XEP-0178): the certificate proves the domain.
    async fn sasl_external(
        &mut self,
        conn: &mut XmlConn,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let write_err = |_| StreamError::new(StreamCondition::UndefinedCondition);
        let failure =
            |cond: &str| Element::new("failure", ns::SASL).with_child(Element::new(cond, ns::SASL));
        if self.sasl_done || el.attr("mechanism") != Some("EXTERNAL") {
            conn.send(&failure("invalid-mechanism"))
                .await
                .map_err(write_err)?;
            return Ok(false);
        }
        let authzid = match proto::external_authzid(el) {
            Ok(a) => a,
            Err(_) => {
                conn.send(&failure("incorrect-encoding"))
                    .await
                    .map_err(write_err)?;
                return Ok(false);
            }
        };
        let Some(domain) = authzid
            .as_deref()
            .and_then(canto_stanza::jid::normalize_domain)
            .or_else(|| self.claimed.clone())
        else {
            conn.send(&failure("not-authorized"))
                .await
                .map_err(write_err)?;
            return Ok(false);
        };
        // XEP-0178 §3.1: the authorization identity, when given, is the header's `from`.
        let matches_claim = self
            .claimed
            .as_deref()
            .is_none_or(|c| c.eq_ignore_ascii_case(&domain));
        if !matches_claim {
            conn.send(&failure("invalid-authzid"))
                .await
                .map_err(write_err)?;
            return Ok(false);
        }
        if !conn.is_tls() || !self.cert_valid(conn, &domain) {
            conn.send(&failure("not-authorized"))
                .await
                .map_err(write_err)?;
            return Ok(false);
        }
        if !self.count(&domain) {
            return Err(StreamError::new(StreamCondition::PolicyViolation)
                .with_text("too many connections from your domain"));
        }
        conn.send(&Element::new("success", ns::SASL))
            .await
            .map_err(write_err)?;
        info!(remote = %domain, local = %self.local, peer = %self.peer, method = "SASL EXTERNAL", "s2s: incoming stream authenticated");
        self.s2s.authenticated(&domain, "EXTERNAL");
        self.pairs.insert((domain, self.local.clone()));
        self.sasl_done = true;
        conn.restart();
        self.opened = false;
        self.header_sent = false;
        Ok(true)
    }

    fn count(&mut self, domain: &str) -> bool {
        if self.counted.iter().any(|d| d == domain) {
            return true;
        }
        if !self.s2s.incoming_acquire(domain) {
            return false;
        }
        self.counted.push(domain.to_string());
        true
    }

    /// XEP-0220 §2.1.1–§2.1.3: `<db:result from='remote' to='local'>key</db:result>`.
    async fn dialback_result(
        &mut self,
        conn: &mut XmlConn,
        el: &Element,
        tx: &mpsc::Sender<Verdict>,
    ) -> Result<(), StreamError> {
        let write_err = |_| StreamError::new(StreamCondition::UndefinedCondition);
        self.attempts += 1;
        if self.attempts > self.s2s.config().s2s.max_dialback_attempts {
            return Err(StreamError::new(StreamCondition::PolicyViolation)
                .with_text("too many dialback requests"));
        }
        let (Some(remote), Some(local)) = (
            el.attr("from")
                .and_then(canto_stanza::jid::normalize_domain),
            el.attr("to").and_then(canto_stanza::jid::normalize_domain),
        ) else {
            return Err(StreamError::new(StreamCondition::ImproperAddressing));
        };
        if el.attr("type").is_some() {
            // A verdict is ours to give, not the peer's (XEP-0220 §2.1.3): an unsolicited
            // result on this stream is refused.
            return Err(StreamError::new(StreamCondition::NotAuthorized)
                .with_text("unsolicited dialback result"));
        }
        if !self.s2s.is_local(&local) {
            // XEP-0220 §2.4: a domain not served here.
            conn.send(&proto::db_error(
                "result",
                &local,
                &remote,
                "item-not-found",
                "cancel",
            ))
            .await
            .map_err(write_err)?;
            return Ok(());
        }
        if self.pairs.contains(&(remote.clone(), local.clone())) {
            conn.send(&proto::db_answer("result", &local, &remote, None, true))
                .await
                .map_err(write_err)?;
            return Ok(());
        }
        let cert_ok = conn.is_tls() && self.cert_valid(conn, &remote);
        if self.s2s.config().s2s.requires_certificate(&remote) && !cert_ok {
            // s2s.secure_auth: dialback alone is not enough for this domain.
            warn!(%remote, peer = %self.peer, "s2s: dialback refused: no valid certificate");
            conn.send(&proto::db_error(
                "result",
                &local,
                &remote,
                "not-authorized",
                "auth",
            ))
            .await
            .map_err(write_err)?;
            return Ok(());
        }
        if cert_ok {
            // XEP-0344 §4: the certificate already proves the domain; no callback needed.
            return self
                .verdict(
                    conn,
                    Verdict {
                        remote,
                        local,
                        valid: true,
                        unreachable: false,
                    },
                )
                .await;
        }
        let key = el.text();
        let id = self.id.clone();
        let s2s = self.s2s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = super::outgoing::verify_key(&s2s, &local, &remote, &id, key.trim()).await;
            let (valid, unreachable) = match r {
                Ok(v) => (v, false),
                Err(e) => {
                    debug!(%remote, reason = %e.reason, "s2s: dialback verification failed");
                    (false, true)
                }
            };
            let _ = tx
                .send(Verdict {
                    remote,
                    local,
                    valid,
                    unreachable,
                })
                .await;
        });
        Ok(())
    }

    async fn verdict(&mut self, conn: &mut XmlConn, v: Verdict) -> Result<(), StreamError> {
        let write_err = |_| StreamError::new(StreamCondition::UndefinedCondition);
        if v.unreachable {
            conn.send(&proto::db_error(
                "result",
                &v.local,
                &v.remote,
                "remote-server-not-found",
                "cancel",
            ))
            .await
            .map_err(write_err)?;
            return Ok(());
        }
        if v.valid {
            if !self.count(&v.remote) {
                return Err(StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("too many connections from your domain"));
            }
            info!(remote = %v.remote, local = %v.local, peer = %self.peer, method = "dialback", "s2s: incoming stream authenticated");
            self.s2s.authenticated(&v.remote, "dialback");
            self.pairs.insert((v.remote.clone(), v.local.clone()));
        } else {
            warn!(remote = %v.remote, peer = %self.peer, "s2s: dialback key invalid");
        }
        conn.send(&proto::db_answer(
            "result", &v.local, &v.remote, None, v.valid,
        ))
        .await
        .map_err(write_err)?;
        if !v.valid {
            // XEP-0220 §2.1.3: an invalid key ends the stream.
            return Err(StreamError::new(StreamCondition::NotAuthorized));
        }
        self.start_bidi(conn).await
    }

    /// XEP-0220 §2.2: `<db:verify from='receiving' to='originating' id>key</db:verify>`,
    /// answered from our secret (we are the originating domain's authoritative server).
    async fn dialback_verify(
        &mut self,
        conn: &mut XmlConn,
        el: &Element,
    ) -> Result<(), StreamError> {
        let write_err = |_| StreamError::new(StreamCondition::UndefinedCondition);
        self.attempts += 1;
        if self.attempts > self.s2s.config().s2s.max_dialback_attempts {
            return Err(StreamError::new(StreamCondition::PolicyViolation)
                .with_text("too many dialback requests"));
        }
        let (Some(receiving), Some(originating), Some(id)) = (
            el.attr("from")
                .and_then(canto_stanza::jid::normalize_domain),
            el.attr("to").and_then(canto_stanza::jid::normalize_domain),
            el.attr("id"),
        ) else {
            return Err(StreamError::new(StreamCondition::ImproperAddressing));
        };
        if el.attr("type").is_some() {
            return Err(StreamError::new(StreamCondition::NotAuthorized)
                .with_text("unsolicited dialback verification result"));
        }
        if !self.s2s.is_local(&originating) {
            conn.send(&proto::db_error(
                "verify",
                &originating,
                &receiving,
                "item-not-found",
                "cancel",
            ))
            .await
            .map_err(write_err)?;
            return Ok(());
        }
        let valid =
            proto::dialback_key_valid(&self.s2s.secret, &receiving, &originating, id, &el.text());
        conn.send(&proto::db_answer(
            "verify",
            &originating,
            &receiving,
            Some(id),
            valid,
        ))
        .await
        .map_err(write_err)?;
        Ok(())
    }

    /// A stanza: its `from` at a domain this stream authenticated, its `to` at the local
    /// domain of that pair (RFC 6120 §8.1.1.2, §8.1.2.2, §13.7.1).
    async fn stanza(&mut self, mut el: Element) -> Result<(), StreamError> {
        if !matches!(el.name(), "message" | "presence" | "iq") || el.ns() != ns::SERVER {
            // RFC 6120 §4.9.3.24
            return Err(StreamError::new(StreamCondition::UnsupportedStanzaType));
        }
        if self.pairs.is_empty() {
            // RFC 6120 §4.9.3.12: stanzas before authentication.
            return Err(StreamError::new(StreamCondition::NotAuthorized));
        }
        let from = el
            .attr("from")
            .and_then(|f| parse_jid(f).ok())
            .ok_or_else(|| StreamError::new(StreamCondition::InvalidFrom))?;
        let to = el
            .attr("to")
            .and_then(|t| parse_jid(t).ok())
            .ok_or_else(|| StreamError::new(StreamCondition::ImproperAddressing))?;
        let remote = from.domain().as_str().to_string();
        let local = to.domain().as_str().to_string();
        let from_ok = self.pairs.iter().any(|(r, _)| *r == remote);
        if !from_ok {
            // RFC 6120 §4.9.3.9: a `from` this stream never proved.
            warn!(%remote, peer = %self.peer, "s2s: stanza from a domain the stream did not authenticate");
            return Err(StreamError::new(StreamCondition::InvalidFrom));
        }
        if !self.pairs.contains(&(remote.clone(), local.clone())) {
            // RFC 6120 §4.9.3.6: the `to` must be a domain this pair was authenticated for.
            return Err(StreamError::new(StreamCondition::HostUnknown));
        }
        canto_core::remote::from_server_namespace(&mut el);
        self.s2s.server.route_from_remote(&remote, el).await;
        Ok(())
    }
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

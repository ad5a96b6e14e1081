//! Every metric Canto records for `/metrics` (docs/metrics.md lists them): the names in one
//! place and small functions the rest of the server calls. Recording goes through the `metrics`
//! facade; the recorder (Prometheus, rendered as OpenMetrics) is installed by startup before the
//! server is built, and `canto-net` serves it on `[metrics] listen`.
//!
//! Hot-path handles (stanzas in and out, routing latency, connection gauges) are looked up once
//! and kept in statics, so recording is an atomic add. They are cached only once the recorder is
//! installed ([`recorder_installed`]); before that (unit tests) every call records nowhere.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use canto_stanza::StanzaKind;
use metrics::{Counter, Gauge, Histogram, Unit};

/// Gauge: client connections whose session engine runs, label `kind` (`tcp`, `websocket`,
/// `bosh`), and external component connections (`component`, XEP-0114).
pub const CONNECTIONS: &str = "canto_connections";
/// Gauge: HTTP connections open on the `[http]` listeners.
pub const HTTP_CONNECTIONS: &str = "canto_http_connections";
/// Gauge: bound sessions (resources), hibernating ones included.
pub const SESSIONS: &str = "canto_sessions";
/// Gauge: sessions hibernating for XEP-0198 resumption.
pub const SESSIONS_HIBERNATING: &str = "canto_sessions_hibernating";
/// Gauge: cluster mode, sessions bound on other nodes that this node routes to (mirrors).
pub const CLUSTER_MIRRORS: &str = "canto_cluster_mirrors";
/// Counter: stanzas received from clients, label `kind` (`message`, `presence`, `iq`).
pub const STANZAS_IN: &str = "canto_stanzas_in_total";
/// Counter: stanzas queued to client sessions, label `kind` (`message`, `presence`, `iq`,
/// `other`).
pub const STANZAS_OUT: &str = "canto_stanzas_out_total";
/// Histogram: seconds spent routing one stanza from a client, label `kind`.
pub const ROUTING_DURATION: &str = "canto_routing_duration_seconds";
/// Histogram: seconds one storage operation takes, label `op`.
pub use canto_storage::metrics::STORAGE_DURATION;
/// Counter: stanzas dropped or refused for capacity, label `reason` ([`DROP_SESSION_QUEUE`],
/// [`DROP_OFFLINE_FULL`], [`DROP_PENDING_SUBSCRIPTIONS`]).
pub const QUEUE_DROPS: &str = "canto_queue_drops_total";
/// Counter: failed SASL authentications, label `mechanism`.
pub const AUTH_FAILURES: &str = "canto_auth_failures_total";
/// Counter: files stored by the HTTP upload service (XEP-0363).
pub const UPLOADS: &str = "canto_uploads_total";
/// Counter: bytes of the files stored by the HTTP upload service.
pub const UPLOAD_BYTES: &str = "canto_upload_bytes_total";
/// Counter: uploads refused, label `reason`.
pub const UPLOAD_REFUSALS: &str = "canto_upload_refusals_total";
/// Gauge: MUC rooms in memory (every room of every MUC service).
pub const MUC_ROOMS: &str = "canto_muc_rooms";
/// Gauge: MUC occupants (nicks in rooms).
pub const MUC_OCCUPANTS: &str = "canto_muc_occupants";
/// Counter: remote domains authenticated on server streams, by `method` (docs/federation.md).
pub const S2S_AUTHENTICATIONS: &str = "canto_s2s_authentications_total";

/// `reason` of [`QUEUE_DROPS`]: a session's queue was full (slow reader; it is closed).
pub const DROP_SESSION_QUEUE: &str = "session_queue";
/// `reason` of [`QUEUE_DROPS`]: the recipient's offline storage was full (bounced).
pub const DROP_OFFLINE_FULL: &str = "offline_full";
/// `reason` of [`QUEUE_DROPS`]: a subscription request beyond `roster.max_pending`.
pub const DROP_PENDING_SUBSCRIPTIONS: &str = "pending_subscriptions";
/// `reason` of [`QUEUE_DROPS`]: a stanza for a remote domain beyond `s2s.max_queued_bytes`
/// (bounced with resource-constraint).
pub const DROP_S2S_QUEUE: &str = "s2s_queue";
/// `reason` of [`QUEUE_DROPS`]: an external component's queue was full (it is closed).
pub const DROP_COMPONENT_QUEUE: &str = "component_queue";

/// Bucket bounds (seconds) of the latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

static LIVE: AtomicBool = AtomicBool::new(false);

/// Startup installed the process's recorder: handles may be cached from now on.
pub fn recorder_installed() {
    LIVE.store(true, Ordering::Release);
}

/// Calls `f` with the handle in `cell` (made by `make` once the recorder is installed).
fn with<T>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T, f: impl FnOnce(&T)) {
    if LIVE.load(Ordering::Acquire) {
        f(cell.get_or_init(make));
    } else {
        f(&make());
    }
}

/// The metrics' descriptions (`# HELP`) and units, for the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS,
        "Client connections whose XMPP session engine runs, by transport"
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "HTTP connections open on the [http] listeners"
    );
    describe_gauge!(
        SESSIONS,
        "Bound sessions (resources), hibernating ones included"
    );
    describe_gauge!(
        SESSIONS_HIBERNATING,
        "Sessions hibernating for XEP-0198 resumption"
    );
    describe_gauge!(
        CLUSTER_MIRRORS,
        "Cluster mode: sessions bound on other nodes that this node routes to"
    );
    describe_counter!(STANZAS_IN, "Stanzas received from clients, by kind");
    describe_counter!(STANZAS_OUT, "Stanzas queued to client sessions, by kind");
    describe_histogram!(
        ROUTING_DURATION,
        Unit::Seconds,
        "Time spent routing one stanza from a client, by kind"
    );
    describe_histogram!(
        STORAGE_DURATION,
        Unit::Seconds,
        "Time one storage operation takes, by operation"
    );
    describe_counter!(
        QUEUE_DROPS,
        "Stanzas dropped or refused for capacity, by reason"
    );
    describe_counter!(AUTH_FAILURES, "Failed SASL authentications, by mechanism");
    describe_counter!(UPLOADS, "Files stored by the HTTP upload service");
    describe_counter!(
        UPLOAD_BYTES,
        Unit::Bytes,
        "Bytes of the files stored by the HTTP upload service"
    );
    describe_counter!(UPLOAD_REFUSALS, "Uploads refused, by reason");
    describe_gauge!(MUC_ROOMS, "MUC rooms in memory");
    describe_gauge!(MUC_OCCUPANTS, "MUC occupants (nicks in rooms)");
}

fn kind_index(name: &str) -> usize {
    match name {
        "message" => 0,
        "presence" => 1,
        "iq" => 2,
        _ => 3,
    }
}

const KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

fn stanza_kind_index(kind: StanzaKind) -> usize {
    match kind {
        StanzaKind::Message => 0,
        StanzaKind::Presence => 1,
        StanzaKind::Iq => 2,
    }
}

/// A stanza of `kind` arrived from a client.
pub fn stanza_in(kind: StanzaKind) {
    static C: [OnceLock<Counter>; 3] = [const { OnceLock::new() }; 3];
    let i = stanza_kind_index(kind);
    with(
        &C[i],
        || metrics::counter!(STANZAS_IN, "kind" => KINDS[i]),
        |c| c.increment(1),
    );
}

/// The kind of a stanza queued to a session, for [`stanza_out`].
#[derive(Clone, Copy, Debug)]
pub struct OutKind(usize);

impl OutKind {
    /// The kind of a top-level element named `name` (`message`, `presence`, `iq`, other).
    pub fn of(name: &str) -> OutKind {
        OutKind(kind_index(name))
    }
}

/// A stanza of `kind` was queued to a session.
pub fn stanza_out(kind: OutKind) {
    static C: [OnceLock<Counter>; 4] = [const { OnceLock::new() }; 4];
    let i = kind.0;
    with(
        &C[i],
        || metrics::counter!(STANZAS_OUT, "kind" => KINDS[i]),
        |c| c.increment(1),
    );
}

/// Times the routing of one client stanza: records into [`ROUTING_DURATION`] when dropped.
pub struct RoutingTimer {
    kind: usize,
    start: Instant,
}

impl RoutingTimer {
    /// Starts timing a stanza of `kind`.
    pub fn start(kind: StanzaKind) -> RoutingTimer {
        RoutingTimer {
            kind: stanza_kind_index(kind),
            start: Instant::now(),
        }
    }
}

impl Drop for RoutingTimer {
    fn drop(&mut self) {
        static H: [OnceLock<Histogram>; 3] = [const { OnceLock::new() }; 3];
        let i = self.kind;
        let secs = self.start.elapsed().as_secs_f64();
        with(
            &H[i],
            || metrics::histogram!(ROUTING_DURATION, "kind" => KINDS[i]),
            |h| h.record(secs),
        );
    }
}

/// A stanza was dropped or refused for capacity (`reason`: one of the `DROP_` constants).
pub fn queue_drop(reason: &'static str) {
    metrics::counter!(QUEUE_DROPS, "reason" => reason).increment(1);
}

/// A SASL authentication with `mechanism` (its IANA name, or `unknown`) failed.
pub fn auth_failure(mechanism: &'static str) {
    metrics::counter!(AUTH_FAILURES, "mechanism" => mechanism).increment(1);
}

/// The HTTP upload service stored a file of `bytes` bytes (XEP-0363).
pub fn upload_stored(bytes: u64) {
    metrics::counter!(UPLOADS).increment(1);
    metrics::counter!(UPLOAD_BYTES).increment(bytes);
}

/// The HTTP upload service refused an upload (`reason`: a short fixed word such as
/// `too_large`, `quota`, `bad_slot`).
pub fn upload_refused(reason: &'static str) {
    metrics::counter!(UPLOAD_REFUSALS, "reason" => reason).increment(1);
}

/// Sets the session gauges (at scrape time: the counts are cheap to read then).
pub fn set_sessions(bound: usize, hibernating: usize, mirrors: usize) {
    metrics::gauge!(SESSIONS).set(bound as f64);
    metrics::gauge!(SESSIONS_HIBERNATING).set(hibernating as f64);
    metrics::gauge!(CLUSTER_MIRRORS).set(mirrors as f64);
}

/// Counts one in a gauge while it lives: incremented when made (and when cloned), decremented
/// when dropped, so an unwinding or cancelled task is counted out too.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> GaugeGuard {
        g.increment(1.0);
        GaugeGuard(g)
    }

    fn cached(cell: &'static OnceLock<Gauge>, make: impl FnOnce() -> Gauge) -> GaugeGuard {
        let mut out = None;
        with(cell, make, |g| out = Some(GaugeGuard::new(g.clone())));
        out.unwrap_or_else(|| GaugeGuard::new(Gauge::noop()))
    }
}

impl Clone for GaugeGuard {
    fn clone(&self) -> GaugeGuard {
        GaugeGuard::new(self.0.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl fmt::Debug for GaugeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GaugeGuard")
    }
}

/// A client connection of `kind` (`tcp`, `websocket`, `bosh`), an external component
/// connection (`component`) or a server-to-server stream (`s2s_in`, `s2s_out`) is served
/// while the guard lives.
pub fn connection(kind: &'static str) -> GaugeGuard {
    static G: [OnceLock<Gauge>; 7] = [const { OnceLock::new() }; 7];
    let i = match kind {
        "tcp" => 0,
        "websocket" => 1,
        "bosh" => 2,
        "component" => 4,
        "s2s_in" => 5,
        "s2s_out" => 6,
        _ => 3,
    };
    GaugeGuard::cached(&G[i], || metrics::gauge!(CONNECTIONS, "kind" => kind))
}

/// An HTTP connection is open while the guard lives.
pub fn http_connection() -> GaugeGuard {
    static G: OnceLock<Gauge> = OnceLock::new();
    GaugeGuard::cached(&G, || metrics::gauge!(HTTP_CONNECTIONS))
}

/// A MUC room exists while the guard lives.
pub fn muc_room() -> GaugeGuard {
    static G: OnceLock<Gauge> = OnceLock::new();
    GaugeGuard::cached(&G, || metrics::gauge!(MUC_ROOMS))
}

/// A MUC occupant is in a room while the guard lives.
pub fn muc_occupant() -> GaugeGuard {
    static G: OnceLock<Gauge> = OnceLock::new();
    GaugeGuard::cached(&G, || metrics::gauge!(MUC_OCCUPANTS))
}

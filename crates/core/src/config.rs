//! Configuration: TOML, every key optional, unknown keys refused with their name.
//!
//! The example configuration (`canto config example`) is generated from [`Config::default`] and
//! the documentation table [`DOCS`]; a test keeps the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for storage and generated certificates.
    pub data_dir: PathBuf,
    /// Virtual hosts served.
    pub hosts: Vec<String>,
    /// Modules enabled on every host (Prosody's `modules_enabled`).
    pub modules: Vec<String>,
    /// Unix socket through which `canto user del` reaches the running server; relative paths
    /// are under `data_dir`; empty disables it.
    pub admin_socket: PathBuf,
    /// Client-to-server listeners and stream settings.
    pub c2s: C2sConfig,
    /// Storage backend.
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
    /// Abuse limits.
    pub limits: LimitsConfig,
    /// Certificate and key per virtual host; a host without an entry gets a self-signed
    /// certificate generated on first run under `data_dir/certs/`.
    pub certificates: BTreeMap<String, CertificateConfig>,
    /// Rosters (RFC 6121 §2).
    pub roster: RosterConfig,
    /// Offline messages (XEP-0160).
    pub offline: OfflineConfig,
    /// Message delivery rules (RFC 6121 §8.5).
    pub delivery: DeliveryConfig,
    /// In-band registration (XEP-0077, module `register`).
    pub register: RegisterConfig,
    /// Stream management (XEP-0198).
    pub stream_management: StreamManagementConfig,
    /// Client state indication (XEP-0352).
    pub csi: CsiConfig,
    /// The HTTP server: WebSocket (RFC 7395), BOSH (XEP-0206), XEP-0156 discovery, uploads.
    pub http: HttpConfig,
    /// The metrics endpoint (`/metrics`, OpenMetrics text), on its own address.
    pub metrics: MetricsConfig,
    /// Cluster mode: several nodes serving the same domains over NATS (docs/cluster.md).
    pub cluster: ClusterConfig,
    /// Server-to-server federation (RFC 6120, XEP-0220, XEP-0288, XEP-0368).
    pub s2s: S2sConfig,
    /// DNS for outgoing server-to-server connections (SRV, A/AAAA, TLSA).
    pub dns: DnsConfig,
    /// The external component listener (XEP-0114).
    pub component: ComponentListenConfig,
    /// External components by domain (`[components."gateway.example.org"] secret = …`).
    pub components: BTreeMap<String, ComponentConfig>,
    /// Hosted services by domain (`[services."pubsub.example.org"]`): added with a `kind`,
    /// or a default one (`pubsub.HOST` for each host) switched off with `enabled = false`.
    pub services: BTreeMap<String, ServiceConfig>,
    /// The modules' own sections (`[vcard]`, `[mam]`…), by top-level key, as written: each
    /// module parses and validates its own ([`crate::module::ModuleConfig`]); a key no module
    /// claims is an unknown key ([`crate::module::check_sections`]).
    #[serde(skip)]
    pub sections: BTreeMap<String, toml::Value>,
}

/// `[services."DOMAIN"]`: one hosted service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// What serves the domain: one of [`SERVICE_KINDS`]. May be left out only to switch off a
    /// default service (`enabled = false`).
    pub kind: Option<String>,
    /// False switches the service off (also a default one such as `pubsub.HOST`).
    pub enabled: bool,
    /// The host whose disco#items lists it; by default the host the domain is a subdomain of,
    /// else the first host.
    pub parent: Option<String>,
    /// A human-readable name for disco.
    pub name: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            kind: None,
            enabled: true,
            parent: None,
            name: None,
        }
    }
}

/// Kinds of hosted service `[services."DOMAIN"] kind` may name, with the prefix of the default
/// domain each host gets (ejabberd's default names).
pub const SERVICE_KINDS: &[(&str, &str)] = &[
    ("pubsub", "pubsub"),
    ("muc", "conference"),
    // XEP-0363 HTTP File Upload at upload.HOST (the kind "upload" is a contract).
    ("upload", "upload"),
];

/// One hosted service as configured: its domain, parent host and display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's domain.
    pub domain: String,
    /// The host listing it in disco#items.
    pub parent: String,
    /// Display name, if configured.
    pub name: Option<String>,
}

/// `[stream_management]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Seconds a resumable session whose connection dropped waits for its client (XEP-0198 §5
    /// `max`); then it ends and its unacknowledged messages are re-routed.
    pub resume_timeout: u64,
    /// Unacknowledged stanzas a session may accumulate before it is closed (plus
    /// `offline.max_messages`, so a full offline store delivered at login fits).
    pub max_unacked: usize,
    /// Unacknowledged stanzas after which the server asks for an ack (`<r/>`).
    pub request_ack_after: usize,
    /// Milliseconds an answer to the client's `<r/>` may wait to go out with the next write
    /// (0: written at once).
    pub answer_delay_ms: u64,
    /// Resumable sessions that ended, remembered (the most recent ones) so a late `<resume/>`
    /// gets `<failed h='…'/>` (XEP-0198 §5).
    pub remember_expired: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            resume_timeout: 300,
            max_unacked: 500,
            request_ack_after: 5,
            answer_delay_ms: 10,
            remember_expired: 10_000,
        }
    }
}

/// `[csi]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    /// Stanzas held back for an inactive client; one more flushes them all.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 100 }
    }
}

/// `[register]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterConfig {
    /// Seconds between two registrations from one address (IPv6: one /64).
    pub min_interval: u64,
    /// Registration attempts, successful or not, allowed from one address (IPv6: one /64) per
    /// `attempt_period`; beyond, `resource-constraint` (Prosody's `registration_throttle_max`).
    pub max_attempts: u32,
    /// Seconds over which `max_attempts` are counted (Prosody's
    /// `registration_throttle_period`).
    pub attempt_period: u64,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            min_interval: 300,
            max_attempts: 10,
            attempt_period: 600,
        }
    }
}

/// `[delivery]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// A `chat` message to a bare JID goes to every available resource of equal highest
    /// priority (RFC 6121 §8.5.2.1.1 allows either); false: to one of them.
    pub chat_to_all_highest_priority: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            chat_to_all_highest_priority: true,
        }
    }
}

/// `[roster]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RosterConfig {
    /// Items per roster; adding beyond is `not-allowed` (RFC 6121 §2.3.3 lets servers limit).
    pub max_items: usize,
    /// Inbound subscription requests kept pending per account (RFC 6121 §3.1.3); a request
    /// from a new contact beyond is dropped, neither stored nor delivered.
    pub max_pending: usize,
}

impl Default for RosterConfig {
    fn default() -> Self {
        RosterConfig {
            max_items: 5000,
            max_pending: 1000,
        }
    }
}

/// `[offline]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Messages stored per account; beyond, senders get `service-unavailable` (nothing is lost
    /// silently).
    pub max_messages: usize,
}

/// `[http]`: one HTTP(S) server for web clients and uploads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Plain HTTP listeners (for a reverse proxy in front).
    pub listen: Vec<String>,
    /// HTTPS listeners, with the hosts' certificates chosen by SNI.
    pub https_listen: Vec<String>,
    /// The public base URL of this server's HTTP endpoints (upload links); empty: derived
    /// from the first HTTPS (else HTTP) listener's port and the host.
    pub external_url: String,
    /// Addresses (CIDR or IP) of reverse proxies whose `X-Forwarded-For` / `Forwarded`
    /// (RFC 7239) headers name the real client.
    pub trusted_proxies: Vec<String>,
    /// Origins allowed to call the XMPP endpoints from a browser (CORS); `"*"`: any.
    pub cors_origins: Vec<String>,
    /// Bytes of one request body (BOSH, host-meta; uploads have their own limit).
    pub max_request_body: usize,
    /// Bytes of a request's header section.
    pub max_header_bytes: usize,
    /// Seconds a client may take to send a request's headers (slow-request protection).
    pub header_timeout: u64,
    /// Seconds a client may take to send a request body (uploads excepted: see
    /// `upload_min_rate`).
    pub request_timeout: u64,
    /// Open HTTP connections in all (beyond: refused).
    pub max_connections: usize,
    /// When set, WebSocket clients are sent elsewhere: `<close see-other-uri=…/>` (RFC 7395
    /// §3.6.2).
    pub websocket_redirect: String,
    /// Bytes of one WebSocket message.
    pub websocket_max_message: usize,
    /// Longest `wait` a BOSH client may ask for, in seconds (XEP-0124 §7.1).
    pub bosh_max_wait: u64,
    /// Longest `hold` (requests the server keeps waiting) a BOSH client may ask for.
    pub bosh_max_hold: u32,
    /// Seconds a BOSH session may go without a request before it ends (XEP-0124 §7.1
    /// `inactivity`).
    pub bosh_max_inactivity: u64,
    /// Longest pause a BOSH client may ask for, in seconds (XEP-0124 §10 `maxpause`).
    pub bosh_max_pause: u64,
    /// BOSH sessions open at once (beyond: `service-unavailable`).
    pub bosh_max_sessions: usize,
    /// Bytes waiting for a BOSH client to fetch them; beyond, the session ends (a slow reader).
    pub bosh_max_queued_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            // Prosody 0.12's defaults: plain HTTP on loopback (a proxy's), HTTPS everywhere.
            listen: vec!["127.0.0.1:5280".into()],
            https_listen: vec!["0.0.0.0:5281".into()],
            external_url: String::new(),
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            cors_origins: vec!["*".into()],
            max_request_body: 512 * 1024,
            max_header_bytes: 16 * 1024,
            header_timeout: 10,
            request_timeout: 30,
            max_connections: 10_000,
            websocket_redirect: String::new(),
            websocket_max_message: 512 * 1024,
            // Prosody's mod_bosh defaults: wait 120 s, hold 1, inactivity 60 s.
            bosh_max_wait: 120,
            bosh_max_hold: 1,
            bosh_max_inactivity: 60,
            bosh_max_pause: 300,
            bosh_max_sessions: 10_000,
            bosh_max_queued_bytes: 1024 * 1024,
        }
    }
}

/// `[s2s]`: server-to-server streams (docs/federation.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// STARTTLS listeners for incoming server streams (RFC 6120 §5).
    pub listen: Vec<String>,
    /// Direct TLS listeners (XEP-0368, `_xmpps-server`).
    pub direct_tls_listen: Vec<String>,
    /// Peers must authenticate with a valid certificate (SASL EXTERNAL, or dialback over a
    /// verified TLS connection); false lets dialback over any TLS or none (Prosody's
    /// `s2s_secure_auth`).
    pub secure_auth: bool,
    /// Extra trusted CA certificates (PEM) beside the system roots.
    pub ca_file: PathBuf,
    /// Remote domains exempt from `secure_auth` (dialback without a valid certificate).
    pub insecure_domains: Vec<String>,
    /// Remote domains that must present a valid certificate even when `secure_auth` is false.
    pub secure_domains: Vec<String>,
    /// Require TLS on every server stream (plaintext streams are refused and not attempted).
    pub require_encryption: bool,
    /// Offer and use bidirectional streams (XEP-0288).
    pub bidi: bool,
    /// Seconds a server stream may stay without traffic before it is closed.
    pub idle_timeout: u64,
    /// Seconds an outgoing connection may take, DNS to authenticated; then the stanzas queued
    /// for it are bounced with remote-server-timeout.
    pub connect_timeout: u64,
    /// Bytes of one stanza from a peer server.
    pub max_stanza_size: usize,
    /// Bytes queued for a remote domain while its connection is set up; beyond, stanzas are
    /// bounced with resource-constraint.
    pub max_queued_bytes: usize,
    /// Incoming streams open at once that claim one remote domain.
    pub max_connections_per_domain: usize,
    /// Dialback requests (`<db:result/>`, `<db:verify/>`) one incoming stream may make.
    pub max_dialback_attempts: u32,
    /// Read rate per server connection (as `[limits.c2s] rate`).
    pub rate: String,
    /// Burst of the read rate (as `[limits.c2s] burst`).
    pub burst: String,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: vec!["0.0.0.0:5269".into()],
            direct_tls_listen: Vec::new(),
            secure_auth: true,
            ca_file: PathBuf::new(),
            insecure_domains: Vec::new(),
            secure_domains: Vec::new(),
            require_encryption: true,
            bidi: true,
            idle_timeout: 600,
            connect_timeout: 30,
            // Issue 14: 512 KiB, Prosody's s2s_stanza_size_limit.
            max_stanza_size: 512 * 1024,
            max_queued_bytes: 1024 * 1024,
            max_connections_per_domain: 8,
            max_dialback_attempts: 64,
            rate: "1mb/s".into(),
            burst: "2s".into(),
        }
    }
}

impl S2sConfig {
    /// Whether `domain` must authenticate with a valid certificate: `secure_auth`, unless
    /// listed in `insecure_domains`; `secure_domains` always.
    pub fn requires_certificate(&self, domain: &str) -> bool {
        let listed = |l: &[String]| l.iter().any(|d| d.eq_ignore_ascii_case(domain));
        if listed(&self.secure_domains) {
            return true;
        }
        self.secure_auth && !listed(&self.insecure_domains)
    }
}

/// `[dns]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`IP` or `IP:PORT`); empty: those of `/etc/resolv.conf`.
    pub servers: Vec<String>,
    /// Use DANE-TLSA records (RFC 7673) when the answers are DNSSEC-validated.
    pub dane: bool,
}

/// `[component]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentListenConfig {
    /// Listeners for external components (XEP-0114, usually port 5347); empty: off.
    pub listen: Vec<String>,
}

/// `[components."DOMAIN"]`: one external component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentConfig {
    /// The shared secret of the handshake (XEP-0114 §3).
    pub secret: String,
    /// The host whose disco#items lists the component; empty: the first host.
    pub parent: String,
    /// Its name in disco#items.
    pub name: String,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address (IP:PORT) serving `/metrics`; empty: off. Never the public HTTP listener.
    pub listen: String,
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://127.0.0.1:4222`); empty: single node.
    pub nats_url: String,
    /// This node's name, unique in the cluster; empty: the host name.
    pub node_name: String,
    /// Prefix of every NATS subject the cluster uses (several clusters on one NATS).
    pub subject_prefix: String,
    /// Milliseconds between this node's heartbeats.
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a node counts as dead: its sessions are
    /// gone for the others and its rooms move.
    pub node_timeout_ms: u64,
    /// Largest stanza, in bytes, forwarded between nodes (larger ones are refused with
    /// `resource-constraint`, never cut).
    pub max_forward_bytes: usize,
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }

    fn validate(&self, backend: &str) -> Result<(), ConfigError> {
        // A NATS subject token: no separators, wildcards or spaces.
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !token(&self.subject_prefix) {
            return bad(format!(
                "`cluster.subject_prefix` = {:?}: letters, digits, - and _ only",
                self.subject_prefix
            ));
        }
        if !self.node_name.is_empty() && !token(&self.node_name) {
            return bad(format!(
                "`cluster.node_name` = {:?}: letters, digits, - and _ only",
                self.node_name
            ));
        }
        if self.heartbeat_ms == 0 || self.node_timeout_ms < 2 * self.heartbeat_ms {
            return bad(
                "`cluster.node_timeout_ms` must be at least twice `cluster.heartbeat_ms` (> 0)"
                    .into(),
            );
        }
        if self.max_forward_bytes < 4096 {
            return bad("`cluster.max_forward_bytes` must be at least 4096".into());
        }
        if self.enabled() && backend == "memory" {
            return bad(
                "`cluster.nats_url` is set but `storage.backend` = \"memory\": the nodes of a \
                 cluster share one database (\"postgresql\")"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: String::new(),
            node_name: String::new(),
            subject_prefix: "canto".into(),
            heartbeat_ms: 1000,
            node_timeout_ms: 5000,
            max_forward_bytes: 1 << 20,
        }
    }
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { max_messages: 1000 }
    }
}

/// `[c2s]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    /// STARTTLS listeners (RFC 6120 §5).
    pub listen: Vec<String>,
    /// Direct TLS listeners (XEP-0368).
    pub direct_tls_listen: Vec<String>,
    /// Refuse SASL before TLS. When false, every mechanism including PLAIN is offered on an
    /// unencrypted stream (loopback benchmarks and tests only).
    pub require_encryption: bool,
    /// Bytes per stanza once authenticated.
    pub max_stanza_size: usize,
    /// Bytes per stanza before authentication.
    pub max_stanza_size_unauthenticated: usize,
    /// Element nesting depth per stanza.
    pub max_stanza_depth: usize,
    /// Elements per stanza once authenticated.
    pub max_stanza_elements: usize,
    /// Attributes per element.
    pub max_attributes: usize,
    /// Seconds a connection may take from connect to bound resource.
    pub auth_timeout: u64,
    /// Stanzas queued for one session before a slow reader is disconnected.
    pub max_send_queue: usize,
    /// Seconds one write to a client may take before the connection is dropped.
    pub send_timeout: u64,
    /// Bound resources per account; binding beyond gets `resource-constraint` (RFC 6120 §7.6.2.1).
    pub max_sessions_per_account: usize,
    /// Seconds without a byte from a bound client after which the server pings it (XEP-0199
    /// §4.2; Prosody's `c2s_timeout`/mod_ping, ejabberd's `ping_interval`). Any byte resets it.
    pub idle_timeout: u64,
    /// Seconds to wait for any byte after that ping before closing with `connection-timeout`
    /// (RFC 6120 §4.9.3.4).
    pub ping_timeout: u64,
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `"sqlite"`, `"postgresql"` or `"memory"`.
    pub backend: String,
    /// SQLite file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// PostgreSQL: `postgres://user[:password]@host[:port]/database` (required with
    /// `backend = "postgresql"`; the database must exist, Canto creates its tables).
    pub url: String,
    /// PostgreSQL: connections in the pool at most.
    pub pool_size: u32,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// SASL failures allowed on one connection before it is closed (RFC 6120 §6.4.5: 2 to 5).
    pub auth_retries: u32,
    /// Failures from one IP address after which each further attempt is delayed.
    pub auth_failures_before_delay: u32,
    /// Longest delay, in milliseconds, added to a failing attempt from a noisy address.
    pub auth_max_delay_ms: u64,
    /// PBKDF2 iterations for new credentials.
    pub scram_iterations: u32,
    /// Failures for one account (from any address) after which each further failing attempt
    /// at it is delayed, so guessing one password from many addresses is slowed too.
    pub auth_failures_per_account_before_delay: u32,
    /// Connections open at once from one address (IPv6: one /64); 0 means no cap. Further
    /// connections get a `policy-violation` stream error (RFC 6120 §4.9.3.14).
    pub max_connections_per_ip: u32,
    /// Address ranges (CIDR, or a plain address) that `max_connections_per_ip` does not apply
    /// to.
    pub connection_limit_exempt: Vec<String>,
    /// Recipients of directed presence one session remembers (RFC 6121 §4.6.3: they get
    /// unavailable at logout); directed presence to one more is refused with
    /// `policy-violation`.
    pub max_directed_presence: usize,
    /// Read rate limit for client connections.
    pub c2s: RateLimitConfig,
}

/// `[limits.c2s]`: a token bucket on the bytes read from each connection, before and after
/// authentication (Prosody's mod_limits). Over the limit, the connection is read more slowly;
/// nothing is dropped and nobody is disconnected for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained rate: `"10kb/s"` (units b/s, kb/s, mb/s in powers of 1000 as Prosody counts;
    /// kib/s, mib/s in powers of 1024), or `"unlimited"`.
    pub rate: String,
    /// How long a full bucket lasts at the rate: `"2s"`, `"500ms"`. The bucket holds
    /// rate × burst bytes.
    pub burst: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: "10kb/s".into(),
            burst: "2s".into(),
        }
    }
}

/// A parsed read rate limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadLimit {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// Seconds of rate the bucket holds.
    pub burst: std::time::Duration,
}

impl ReadLimit {
    /// The bucket's capacity in bytes (at least one).
    pub fn capacity(&self) -> u64 {
        let b = (self.bytes_per_second as f64 * self.burst.as_secs_f64()) as u64;
        b.max(1)
    }
}

impl RateLimitConfig {
    /// The limit in force: `None` for `"unlimited"`. A value that does not parse (possible only
    /// for a configuration built in code: files are validated) gives the default limit.
    pub fn limit(&self) -> Option<ReadLimit> {
        match (parse_rate(&self.rate), parse_burst(&self.burst)) {
            (Ok(None), _) => None,
            (Ok(Some(bytes_per_second)), Ok(burst)) => Some(ReadLimit {
                bytes_per_second,
                burst,
            }),
            _ => {
                let d = RateLimitConfig::default();
                match (parse_rate(&d.rate), parse_burst(&d.burst)) {
                    (Ok(Some(bytes_per_second)), Ok(burst)) => Some(ReadLimit {
                        bytes_per_second,
                        burst,
                    }),
                    _ => None,
                }
            }
        }
    }
}

/// Parses a rate such as `"10kb/s"`, `"1.5 MB/s"`, `"512b/s"` or `"unlimited"` (→ `None`), case
/// insensitively. k and m are powers of 1000, as in Prosody's mod_limits (`10^3`); ki and mi are
/// powers of 1024.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "unlimited" {
        return Ok(None);
    }
    let bad = || {
        format!(
            "{s:?}: expected a rate such as \"10kb/s\" (b/s, kb/s, mb/s, kib/s, mib/s) or \"unlimited\""
        )
    };
    let unit_at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(unit_at);
    let factor: f64 = match unit.trim_start() {
        "b/s" => 1.0,
        "kb/s" => 1e3,
        "mb/s" => 1e6,
        "kib/s" => 1024.0,
        "mib/s" => 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * factor;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!(
            "{s:?}: the rate must be at least 1 b/s (\"unlimited\" turns the limit off)"
        ));
    }
    if bytes > 1e12 {
        return Err(format!("{s:?}: too large; use \"unlimited\""));
    }
    Ok(Some(bytes.round() as u64))
}

/// Parses a burst duration such as `"2s"`, `"1.5s"` or `"500ms"` (more than zero, at most an
/// hour).
pub fn parse_burst(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || format!("{s:?}: expected a duration such as \"2s\" or \"500ms\"");
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    let num = num.trim_end();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let secs = num.parse::<f64>().map_err(|_| bad())? * scale;
    if !(0.001..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: the burst must be 1ms to 3600s"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses `"192.0.2.0/24"`, `"2001:db8::/32"` or a plain address (a single-address range).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        None => max,
    };
    Ok((ip, len))
}

/// Whether `ip` lies in the range `(net, len)` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn cidr_contains(net: std::net::IpAddr, len: u8, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl LimitsConfig {
    /// Whether `ip` is exempt from `max_connections_per_ip` (ranges that do not parse are
    /// ignored here; configuration files are validated).
    pub fn connection_limit_exempt(&self, ip: std::net::IpAddr) -> bool {
        self.connection_limit_exempt
            .iter()
            .filter_map(|r| parse_cidr(r).ok())
            .any(|(net, len)| cidr_contains(net, len, ip))
    }
}

/// `[certificates."host"]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("canto-data"),
            hosts: vec!["localhost".into()],
            modules: vec![
                "disco".into(),
                "ping".into(),
                "version".into(),
                "time".into(),
                "roster".into(),
                "vcard".into(),
                "private".into(),
                "blocking".into(),
                "carbons".into(),
                // XEP-0313: modern clients sync history from the archive (ejabberd enables
                // mod_mam by default).
                "mam".into(),
                // XEP-0163 and XEP-0060: OMEMO keys, avatars and bookmarks live in PEP.
                "pep".into(),
                "pubsub".into(),
                // XEP-0045 group chat at conference.HOST (Prosody and ejabberd users expect one).
                "muc".into(),
                // XEP-0402 with XEP-0048 conversion (Conversations, Gajim, Dino and Monal sync
                // group-chat bookmarks through it).
                "bookmarks".into(),
                "last".into(),
                "smacks".into(),
                "csi".into(),
                // XEP-0363 file sharing at upload.HOST (Conversations, Gajim, Dino and Monal
                // send files through it), served over [http].
                "upload".into(),
            ],
            admin_socket: PathBuf::from("admin.sock"),
            c2s: C2sConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            certificates: BTreeMap::new(),
            services: BTreeMap::new(),
            roster: RosterConfig::default(),
            offline: OfflineConfig::default(),
            delivery: DeliveryConfig::default(),
            register: RegisterConfig::default(),
            stream_management: StreamManagementConfig::default(),
            csi: CsiConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            cluster: ClusterConfig::default(),
            s2s: S2sConfig::default(),
            dns: DnsConfig::default(),
            component: ComponentListenConfig::default(),
            components: BTreeMap::new(),
            sections: BTreeMap::new(),
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: vec!["0.0.0.0:5222".into()],
            direct_tls_listen: vec!["0.0.0.0:5223".into()],
            require_encryption: true,
            max_stanza_size: 262_144,
            max_stanza_size_unauthenticated: 10_240,
            max_stanza_depth: 32,
            max_stanza_elements: 4096,
            max_attributes: 64,
            auth_timeout: 60,
            max_send_queue: 1000,
            send_timeout: 180,
            max_sessions_per_account: 10,
            // Prosody's c2s read timeout is 840 s; ejabberd pings after 60 s idle.
            idle_timeout: 840,
            ping_timeout: 60,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sqlite".into(),
            path: PathBuf::from("canto.sqlite"),
            url: String::new(),
            // Enough for a busy server; PostgreSQL's default max_connections is 100.
            pool_size: 16,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            auth_retries: 3,
            auth_failures_before_delay: 5,
            auth_max_delay_ms: 5000,
            scram_iterations: 4096,
            auth_failures_per_account_before_delay: 10,
            max_connections_per_ip: 50,
            // Local proxies (a Tor onion service, a TLS terminator) and load tools on the box
            // itself connect from loopback: one address standing for many clients.
            connection_limit_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_directed_presence: 1000,
            c2s: RateLimitConfig::default(),
        }
    }
}

/// A configuration problem, with the exact place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key (the message names it).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said, including the key and line.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        // Top-level keys that are not the core's are module sections, checked by the modules
        // (an unknown one is refused there, by name).
        let core = core_keys();
        let theirs: Vec<String> = table
            .keys()
            .filter(|k| !core.contains(k))
            .cloned()
            .collect();
        let mut sections = BTreeMap::new();
        for k in theirs {
            if let Some(v) = table.remove(&k) {
                sections.insert(k, v);
            }
        }
        let mut c: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        c.sections = sections;
        c.normalize()?;
        Ok(c)
    }

    /// Sets a module section to a value of its type (`config.set_section_value("mam",
    /// &MamConfig { retention_days: 2 })`).
    pub fn set_section_value<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), String> {
        let v = toml::Value::try_from(value).map_err(|e| e.to_string())?;
        self.sections.insert(name.to_string(), v);
        Ok(())
    }

    /// Sets a module section from TOML text (the section's body), e.g.
    /// `config.set_section("mam", "retention_days = 2")`; for an array of tables
    /// (`[[external_services]]`), the text is `items = [...]` and the array is taken.
    pub fn set_section(&mut self, name: &str, body: &str) -> Result<(), String> {
        let table: toml::Table = toml::from_str(body).map_err(|e| e.to_string())?;
        let value = match table.get("items") {
            Some(toml::Value::Array(a)) if table.len() == 1 => toml::Value::Array(a.clone()),
            _ => toml::Value::Table(table),
        };
        self.sections.insert(name.to_string(), value);
        Ok(())
    }

    /// Normalizes host names and checks values.
    pub fn normalize(&mut self) -> Result<(), ConfigError> {
        if self.hosts.is_empty() {
            return Err(ConfigError::Invalid(
                "`hosts` must name at least one host".into(),
            ));
        }
        let mut hosts = Vec::new();
        for h in &self.hosts {
            let n = canto_stanza::jid::normalize_domain(h).ok_or_else(|| {
                ConfigError::Invalid(format!("`hosts`: {h:?} is not a valid domain"))
            })?;
            if !hosts.contains(&n) {
                hosts.push(n);
            }
        }
        self.hosts = hosts;
        for h in self.certificates.keys() {
            if !self.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                return Err(ConfigError::Invalid(format!(
                    "`certificates.{h}` names a host that is not in `hosts`"
                )));
            }
        }
        match self.storage.backend.as_str() {
            "sqlite" | "memory" => {}
            "postgresql" => {
                if self.storage.url.is_empty() {
                    return Err(ConfigError::Invalid(
                        "`storage.backend` = \"postgresql\" needs `storage.url` \
                         (postgres://user@host/database)"
                            .into(),
                    ));
                }
                if !self.storage.url.starts_with("postgres://")
                    && !self.storage.url.starts_with("postgresql://")
                {
                    return Err(ConfigError::Invalid(
                        "`storage.url` must start with postgres:// or postgresql://".into(),
                    ));
                }
                if self.storage.pool_size == 0 {
                    return Err(ConfigError::Invalid(
                        "`storage.pool_size` must be at least 1".into(),
                    ));
                }
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "`storage.backend` = {other:?}: expected \"sqlite\", \"postgresql\" or \"memory\""
                )));
            }
        }
        self.cluster.validate(&self.storage.backend)?;
        let metrics = (!self.metrics.listen.is_empty()).then_some(&self.metrics.listen);
        for addr in self
            .c2s
            .listen
            .iter()
            .chain(&self.c2s.direct_tls_listen)
            .chain(&self.http.listen)
            .chain(&self.http.https_listen)
            .chain(&self.s2s.listen)
            .chain(&self.s2s.direct_tls_listen)
            .chain(&self.component.listen)
            .chain(metrics)
        {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "listen address {addr:?} is not IP:PORT"
                )));
            }
        }
        let sm = &self.stream_management;
        if sm.request_ack_after == 0 || sm.max_unacked <= sm.request_ack_after {
            return Err(ConfigError::Invalid(
                "`stream_management.request_ack_after` must be at least 1 and below `max_unacked`"
                    .into(),
            ));
        }
        if sm.answer_delay_ms > 1000 {
            return Err(ConfigError::Invalid(
                "`stream_management.answer_delay_ms` must be at most 1000".into(),
            ));
        }
        if self.c2s.max_stanza_size < 10_000 {
            return Err(ConfigError::Invalid(
                "`c2s.max_stanza_size` must be at least 10000".into(),
            ));
        }
        if self.c2s.max_stanza_size_unauthenticated < 1024 {
            return Err(ConfigError::Invalid(
                "`c2s.max_stanza_size_unauthenticated` must be at least 1024".into(),
            ));
        }
        if !(1..=64).contains(&self.c2s.max_stanza_depth) {
            return Err(ConfigError::Invalid(
                "`c2s.max_stanza_depth` must be 1 to 64".into(),
            ));
        }
        if self.c2s.max_send_queue == 0 || self.c2s.max_sessions_per_account == 0 {
            return Err(ConfigError::Invalid(
                "`c2s.max_send_queue` and `c2s.max_sessions_per_account` must be positive".into(),
            ));
        }
        if self.limits.scram_iterations < 4096 {
            // RFC 7677 §4: at least 4096.
            return Err(ConfigError::Invalid(
                "`limits.scram_iterations` must be at least 4096".into(),
            ));
        }
        if !(1..=5).contains(&self.limits.auth_retries) {
            // RFC 6120 §6.4.5
            return Err(ConfigError::Invalid(
                "`limits.auth_retries` must be 1 to 5".into(),
            ));
        }
        if self.c2s.idle_timeout == 0 || self.c2s.ping_timeout == 0 {
            return Err(ConfigError::Invalid(
                "`c2s.idle_timeout` and `c2s.ping_timeout` must be at least 1 second".into(),
            ));
        }
        if self.register.max_attempts == 0 || self.register.attempt_period == 0 {
            return Err(ConfigError::Invalid(
                "`register.max_attempts` and `register.attempt_period` must be positive".into(),
            ));
        }
        self.normalize_services()?;
        parse_rate(&self.limits.c2s.rate)
            .map_err(|e| ConfigError::Invalid(format!("`limits.c2s.rate` = {e}")))?;
        parse_burst(&self.limits.c2s.burst)
            .map_err(|e| ConfigError::Invalid(format!("`limits.c2s.burst` = {e}")))?;
        for r in &self.limits.connection_limit_exempt {
            parse_cidr(r).map_err(|e| {
                ConfigError::Invalid(format!("`limits.connection_limit_exempt`: {e}"))
            })?;
        }
        self.check_http()?;
        self.check_s2s()
    }

    fn check_s2s(&self) -> Result<(), ConfigError> {
        let s = &self.s2s;
        if s.max_stanza_size < 10_000 {
            return Err(ConfigError::Invalid(
                "`s2s.max_stanza_size` must be at least 10000".into(),
            ));
        }
        if s.max_queued_bytes < s.max_stanza_size {
            return Err(ConfigError::Invalid(
                "`s2s.max_queued_bytes` must be at least `s2s.max_stanza_size`".into(),
            ));
        }
        if s.idle_timeout == 0 || s.connect_timeout == 0 {
            return Err(ConfigError::Invalid(
                "`s2s.idle_timeout` and `s2s.connect_timeout` must be at least 1 second".into(),
            ));
        }
        if s.max_connections_per_domain == 0 || s.max_dialback_attempts == 0 {
            return Err(ConfigError::Invalid(
                "`s2s.max_connections_per_domain` and `s2s.max_dialback_attempts` must be positive"
                    .into(),
            ));
        }
        parse_rate(&s.rate).map_err(|e| ConfigError::Invalid(format!("`s2s.rate` = {e}")))?;
        parse_burst(&s.burst).map_err(|e| ConfigError::Invalid(format!("`s2s.burst` = {e}")))?;
        for d in &self.dns.servers {
            let ok =
                d.parse::<std::net::IpAddr>().is_ok() || d.parse::<std::net::SocketAddr>().is_ok();
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "`dns.servers`: {d:?} is not IP or IP:PORT"
                )));
            }
        }
        for (domain, c) in &self.components {
            if c.secret.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "`components.\"{domain}\".secret` must be set"
                )));
            }
            if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(domain))
                || self.services.contains_key(domain)
            {
                return Err(ConfigError::Invalid(format!(
                    "`components.\"{domain}\"` names a host or a hosted service"
                )));
            }
            if !c.parent.is_empty() && !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&c.parent))
            {
                return Err(ConfigError::Invalid(format!(
                    "`components.\"{domain}\".parent` is not in `hosts`"
                )));
            }
        }
        Ok(())
    }

    fn check_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        for r in &h.trusted_proxies {
            parse_cidr(r)
                .map_err(|e| ConfigError::Invalid(format!("`http.trusted_proxies`: {e}")))?;
        }
        let url_like = |u: &str, schemes: [&str; 2]| {
            schemes.iter().any(|s| u.starts_with(s))
                && u.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"'<>\\`".contains(&b))
        };
        if !(h.external_url.is_empty() || url_like(&h.external_url, ["https://", "http://"])) {
            return Err(ConfigError::Invalid(format!(
                "`http.external_url` = {:?}: expected an http:// or https:// URL",
                h.external_url
            )));
        }
        if !(h.websocket_redirect.is_empty()
            || url_like(&h.websocket_redirect, ["wss://", "ws://"]))
        {
            return Err(ConfigError::Invalid(format!(
                "`http.websocket_redirect` = {:?}: expected a ws:// or wss:// URL",
                h.websocket_redirect
            )));
        }
        if h.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "`http.max_header_bytes` must be at least 8192".into(),
            ));
        }
        if h.header_timeout == 0 || h.request_timeout == 0 {
            return Err(ConfigError::Invalid(
                "`http.header_timeout` and `http.request_timeout` must be at least 1 second".into(),
            ));
        }
        if h.websocket_max_message < self.c2s.max_stanza_size {
            return Err(ConfigError::Invalid(
                "`http.websocket_max_message` must be at least `c2s.max_stanza_size`".into(),
            ));
        }
        if h.max_request_body < self.c2s.max_stanza_size {
            return Err(ConfigError::Invalid(
                "`http.max_request_body` must be at least `c2s.max_stanza_size` (a BOSH body carries stanzas)".into(),
            ));
        }
        if h.bosh_max_wait == 0 || h.bosh_max_hold == 0 || h.bosh_max_inactivity == 0 {
            return Err(ConfigError::Invalid(
                "`http.bosh_max_wait`, `http.bosh_max_hold` and `http.bosh_max_inactivity` must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Normalizes the domains of `[services]` and checks each entry.
    fn normalize_services(&mut self) -> Result<(), ConfigError> {
        let mut services = BTreeMap::new();
        for (domain, svc) in std::mem::take(&mut self.services) {
            let d = canto_stanza::jid::normalize_domain(&domain).ok_or_else(|| {
                ConfigError::Invalid(format!("`services`: {domain:?} is not a valid domain"))
            })?;
            if self.serves(&d) {
                return Err(ConfigError::Invalid(format!(
                    "`services.\"{d}\"` is a host; a service needs a domain of its own"
                )));
            }
            match svc.kind.as_deref() {
                Some(k) if !SERVICE_KINDS.iter().any(|(kind, _)| *kind == k) => {
                    let known: Vec<&str> = SERVICE_KINDS.iter().map(|(k, _)| *k).collect();
                    return Err(ConfigError::Invalid(format!(
                        "`services.\"{d}\".kind` = {k:?}: expected one of {known:?}"
                    )));
                }
                None if svc.enabled && self.default_service_kind(&d).is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "`services.\"{d}\"` needs a `kind` (it is no default service)"
                    )));
                }
                _ => {}
            }
            if let Some(parent) = &svc.parent
                && !self.serves(parent)
            {
                return Err(ConfigError::Invalid(format!(
                    "`services.\"{d}\".parent` = {parent:?} is not in `hosts`"
                )));
            }
            if services.insert(d.clone(), svc).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "`services`: {d} is configured twice"
                )));
            }
        }
        self.services = services;
        Ok(())
    }

    /// The kind of the default service at `domain` (`pubsub.HOST` is `pubsub`), if it is one.
    fn default_service_kind(&self, domain: &str) -> Option<&'static str> {
        SERVICE_KINDS.iter().find_map(|(kind, prefix)| {
            let host = domain.strip_prefix(prefix)?.strip_prefix('.')?;
            self.serves(host).then_some(*kind)
        })
    }

    /// The hosted services of `kind` to run: each host's default `PREFIX.HOST` (unless
    /// configured otherwise), then the `[services]` entries of that kind, sorted by domain.
    pub fn services_of_kind(&self, kind: &str) -> Vec<ServiceSpec> {
        let mut out: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        if let Some((_, prefix)) = SERVICE_KINDS.iter().find(|(k, _)| *k == kind) {
            for host in &self.hosts {
                let domain = format!("{prefix}.{host}");
                if !self.services.contains_key(&domain) {
                    out.insert(
                        domain.clone(),
                        ServiceSpec {
                            domain,
                            parent: host.clone(),
                            name: None,
                        },
                    );
                }
            }
        }
        for (domain, svc) in &self.services {
            let this_kind = svc
                .kind
                .as_deref()
                .or_else(|| self.default_service_kind(domain));
            if !svc.enabled || this_kind != Some(kind) {
                continue;
            }
            let parent = svc.parent.clone().unwrap_or_else(|| {
                self.hosts
                    .iter()
                    .find(|h| domain.ends_with(&format!(".{h}")))
                    .or_else(|| self.hosts.first())
                    .cloned()
                    .unwrap_or_default()
            });
            out.insert(
                domain.clone(),
                ServiceSpec {
                    domain: domain.clone(),
                    parent,
                    name: svc.name.clone(),
                },
            );
        }
        out.into_values().collect()
    }

    /// The SQLite file path, resolved against `data_dir`.
    pub fn sqlite_path(&self) -> PathBuf {
        if self.storage.path.is_absolute() {
            self.storage.path.clone()
        } else {
            self.data_dir.join(&self.storage.path)
        }
    }

    /// The admin socket path, resolved against `data_dir` (None: disabled).
    pub fn admin_socket_path(&self) -> Option<PathBuf> {
        if self.admin_socket.as_os_str().is_empty() {
            None
        } else if self.admin_socket.is_absolute() {
            Some(self.admin_socket.clone())
        } else {
            Some(self.data_dir.join(&self.admin_socket))
        }
    }

    /// Whether `host` (normalized) is served here.
    pub fn serves(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    /// The example configuration of the core alone, generated from the defaults and [`DOCS`].
    pub fn example() -> String {
        Config::example_with(&[])
    }

    /// The full example configuration: the core's keys and the given module sections, each
    /// with its default and documentation.
    pub fn example_with(sections: &[crate::module::SectionInfo]) -> String {
        let mut out = String::from(
            "# Canto example configuration, generated by `canto config example`.\n\
             # Every key is optional; the values shown are the defaults.\n\n",
        );
        let value = toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Integer(0));
        let Some(core) = value.as_table() else {
            return out;
        };
        let mut table = core.clone();
        let mut docs: Vec<(String, &str)> = DOCS.iter().map(|(k, d)| (k.to_string(), *d)).collect();
        for info in sections {
            if let Some(v) = (info.defaults)() {
                table.insert(info.name.to_string(), v);
            }
            for (k, d) in info.docs {
                let key = if k.is_empty() {
                    info.name.to_string()
                } else {
                    format!("{}.{k}", info.name)
                };
                docs.push((key, d));
            }
        }
        let push_doc = |out: &mut String, key: &str| push_doc_from(&docs, out, key);
        let table = &table;
        // Top-level scalars first, then sections, as TOML requires.
        for (key, v) in table {
            if v.is_table() {
                continue;
            }
            push_doc(&mut out, key);
            out.push_str(&format!("{key} = {v}\n\n"));
        }
        for (section, v) in table {
            let Some(t) = v.as_table() else { continue };
            push_doc(&mut out, section);
            out.push_str(&format!("[{section}]\n"));
            // A section's own keys first, then its sub-tables (`[limits.c2s]`), as TOML requires.
            for (key, v) in t {
                if v.is_table() {
                    continue;
                }
                push_doc(&mut out, &format!("{section}.{key}"));
                out.push_str(&format!("{key} = {v}\n"));
            }
            for (sub, v) in t {
                let Some(st) = v.as_table() else { continue };
                if section == "certificates" || section == "services" {
                    continue;
                }
                out.push('\n');
                push_doc(&mut out, &format!("{section}.{sub}"));
                out.push_str(&format!("[{section}.{sub}]\n"));
                for (key, v) in st {
                    push_doc(&mut out, &format!("{section}.{sub}.{key}"));
                    out.push_str(&format!("{key} = {v}\n"));
                }
            }
            if section == "services" {
                out.push_str(
                    "# [services.\"pubsub.example.org\"]   # the default for each host; this switches it off\n\
                     # enabled = false\n\
                     # [services.\"news.example.org\"]     # one more publish-subscribe service\n\
                     # kind = \"pubsub\"\n\
                     # parent = \"example.org\"              # whose disco#items lists it\n\
                     # name = \"News\"\n",
                );
            }
            if section == "certificates" {
                out.push_str(
                    "# [certificates.\"example.org\"]\n# certificate = \"/etc/canto/example.org.crt\"\n\
                     # key = \"/etc/canto/example.org.key\"\n",
                );
            }
            out.push('\n');
        }
        out
    }
}

fn push_doc_from(docs: &[(String, &str)], out: &mut String, key: &str) {
    if let Some((_, doc)) = docs.iter().find(|(k, _)| k == key) {
        for line in doc.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// The core's top-level keys (what is not among them is a module section).
fn core_keys() -> Vec<String> {
    toml::Value::try_from(Config::default())
        .ok()
        .and_then(|v| v.as_table().map(|t| t.keys().cloned().collect()))
        .unwrap_or_default()
}

/// One line of documentation per configuration key, for the generated example.
pub const DOCS: &[(&str, &str)] = &[
    (
        "data_dir",
        "Directory for storage and generated certificates.",
    ),
    ("hosts", "Virtual hosts served."),
    (
        "modules",
        "Modules enabled on every host. Available: disco, ping, version, time, roster, vcard,\nprivate, blocking, carbons, mam (XEP-0313 archiving), pep (XEP-0163), pubsub (XEP-0060\nservices), bookmarks (XEP-0402), last, smacks (XEP-0198), csi (XEP-0352),\nmuc (XEP-0045), upload (XEP-0363), extdisco, register (off by default).",
    ),
    (
        "admin_socket",
        "Unix socket (under data_dir unless absolute) through which `canto user del` asks the\nrunning server to delete an account; \"\" disables it.",
    ),
    ("c2s", "Client-to-server connections."),
    ("c2s.listen", "STARTTLS listeners (RFC 6120 §5)."),
    ("c2s.direct_tls_listen", "Direct TLS listeners (XEP-0368)."),
    (
        "c2s.require_encryption",
        "Offer no SASL mechanism before TLS. Set to false only for loopback tests and\nbenchmarks: every mechanism, PLAIN included, is then offered in plaintext.",
    ),
    (
        "c2s.max_stanza_size",
        "Bytes per stanza once authenticated (policy-violation beyond).",
    ),
    (
        "c2s.max_stanza_size_unauthenticated",
        "Bytes per stanza before authentication.",
    ),
    ("c2s.max_stanza_depth", "Element nesting depth per stanza."),
    (
        "c2s.max_stanza_elements",
        "Elements per stanza once authenticated (32 before).",
    ),
    ("c2s.max_attributes", "Attributes per element."),
    (
        "c2s.auth_timeout",
        "Seconds from connect to bound resource (connection-timeout beyond).",
    ),
    (
        "c2s.max_send_queue",
        "Stanzas queued for a session before a slow reader is disconnected.",
    ),
    ("c2s.send_timeout", "Seconds a write to a client may block."),
    (
        "c2s.max_sessions_per_account",
        "Bound resources per account (resource-constraint beyond).",
    ),
    (
        "c2s.idle_timeout",
        "Seconds without a byte from a bound client before the server pings it (XEP-0199);\nany byte resets it (Prosody: 840).",
    ),
    (
        "c2s.ping_timeout",
        "Seconds to wait for any byte after that ping before closing with connection-timeout.",
    ),
    ("storage", "Where accounts and user data are kept."),
    (
        "storage.backend",
        "\"sqlite\" (default, a file under data_dir), \"postgresql\" (a PostgreSQL database:\nstorage.url) or \"memory\" (tests). `canto storage copy` moves data between the\nfirst two (docs/storage.md).",
    ),
    (
        "storage.path",
        "SQLite file, relative to data_dir unless absolute.",
    ),
    (
        "storage.url",
        "PostgreSQL: postgres://user[:password]@host[:port]/database (the database must\nexist; its tables are created at startup).",
    ),
    (
        "storage.pool_size",
        "PostgreSQL: connections in the pool at most.",
    ),
    ("log", "Logging (to standard error)."),
    (
        "log.level",
        "error, warn, info, debug, trace, or a tracing filter such as \"canto=debug\".",
    ),
    (
        "limits",
        "Abuse limits: authentication, connections, read rate.",
    ),
    (
        "limits.auth_retries",
        "SASL failures per connection before it is closed (RFC 6120 §6.4.5).",
    ),
    (
        "limits.auth_failures_before_delay",
        "Failures from one address before attempts are slowed.",
    ),
    (
        "limits.auth_max_delay_ms",
        "Longest delay added to a failing attempt, in milliseconds.",
    ),
    (
        "limits.scram_iterations",
        "PBKDF2 iterations for new passwords (at least 4096).",
    ),
    (
        "limits.auth_failures_per_account_before_delay",
        "Failures for one account, from any address, before attempts at it are slowed\n(a success does not reset the count; it is forgotten after ten quiet minutes).",
    ),
    (
        "limits.max_connections_per_ip",
        "Connections open at once from one address (IPv6: per /64); beyond, a\npolicy-violation stream error. 0: no cap.",
    ),
    (
        "limits.connection_limit_exempt",
        "Address ranges (CIDR) not subject to max_connections_per_ip: loopback by default,\nwhere local proxies and load tools connect from.",
    ),
    (
        "limits.max_directed_presence",
        "Recipients of directed presence a session remembers, to send them unavailable at\nlogout (RFC 6121 §4.6.3); directed presence to one more is refused with\npolicy-violation (MUC rooms joined count here).",
    ),
    (
        "limits.c2s",
        "Read rate limit per client connection, before and after authentication (a token\nbucket, as Prosody's mod_limits). Over it the connection is read more slowly;\nnothing is dropped.",
    ),
    (
        "limits.c2s.rate",
        "Sustained rate: b/s, kb/s, mb/s (powers of 1000, as Prosody), kib/s, mib/s\n(powers of 1024), case-insensitive; \"unlimited\" turns the limit off.",
    ),
    (
        "limits.c2s.burst",
        "Seconds of rate a full bucket holds (\"2s\", \"500ms\"): a quiet client may send\nrate × burst bytes at once.",
    ),
    ("certificates", "Certificate and key per host, PEM files."),
    (
        "services",
        "Hosted services, by domain. Each host gets pubsub.HOST (module pubsub), conference.HOST\n(muc) and upload.HOST (upload, XEP-0363) unless switched off here; kind = \"pubsub\",\n\"muc\" or \"upload\" adds another. Keys per service: kind, enabled (false switches one\noff), parent (the host whose disco#items lists it), name.",
    ),
    (
        "register",
        "In-band registration (XEP-0077), when module register is enabled (off by default).",
    ),
    (
        "register.min_interval",
        "Seconds between two registrations from one address (IPv6: per /64).",
    ),
    (
        "register.max_attempts",
        "Registration attempts, successful or not, from one address (IPv6: per /64) per\nattempt_period; beyond, resource-constraint.",
    ),
    (
        "register.attempt_period",
        "Seconds over which register.max_attempts are counted.",
    ),
    (
        "stream_management",
        "Stream management (XEP-0198): acknowledgements and resumption.",
    ),
    (
        "stream_management.resume_timeout",
        "Seconds a resumable session whose connection dropped waits for its client; then it\nends and its unacknowledged messages go to another resource or offline storage.\n0: resumption is not offered.",
    ),
    (
        "stream_management.max_unacked",
        "Unacknowledged stanzas a session may accumulate before it is closed\n(policy-violation); offline.max_messages more are allowed, so a full offline store\ndelivered at login fits.",
    ),
    (
        "stream_management.request_ack_after",
        "Unacknowledged stanzas after which the server asks the client for an ack.",
    ),
    (
        "stream_management.answer_delay_ms",
        "Milliseconds the answer (<a/>) to a client's ack request may wait, so that it goes\nout with the next stanzas written rather than in a write of its own (at most 1000;\n0: answered at once).",
    ),
    (
        "stream_management.remember_expired",
        "Ended resumable sessions remembered (the most recent ones), so a late resumption\nlearns how many of its stanzas arrived (<failed h='…'/>).",
    ),
    (
        "http",
        "The HTTP(S) server: WebSocket at /xmpp-websocket (RFC 7395), BOSH at /http-bind\n(XEP-0206), /.well-known/host-meta[.json] (XEP-0156) and file uploads (XEP-0363).",
    ),
    (
        "http.listen",
        "Plain HTTP listeners (for a reverse proxy in front; Prosody's default: loopback).",
    ),
    (
        "http.https_listen",
        "HTTPS listeners, each host's certificate chosen by SNI.",
    ),
    (
        "http.external_url",
        "Public base URL of the HTTP endpoints (upload links), e.g.\n\"https://xmpp.example.org\"; empty: https://HOST:PORT of the first HTTPS listener\n(else http:// of the first plain one).",
    ),
    (
        "http.trusted_proxies",
        "Reverse proxies (IP or CIDR) whose X-Forwarded-For / Forwarded (RFC 7239)\nheaders name the real client for per-address limits and logs.",
    ),
    (
        "http.cors_origins",
        "Origins a browser may call the XMPP endpoints from (CORS); \"*\": any.",
    ),
    (
        "http.max_request_body",
        "Bytes of one request body (BOSH; uploads have [upload] max_file_size);\nbeyond: 413.",
    ),
    (
        "http.max_header_bytes",
        "Bytes of a request's headers (at least 8192); beyond: 431.",
    ),
    (
        "http.header_timeout",
        "Seconds a client may take to send a request's headers (slowloris protection); also\nhow long an idle keep-alive connection waits for its next request.",
    ),
    (
        "http.request_timeout",
        "Seconds a client may take to send a request body (not uploads).",
    ),
    (
        "http.max_connections",
        "HTTP connections open at once; beyond, new ones are closed at once\n(limits.max_connections_per_ip applies per client too).",
    ),
    (
        "http.websocket_redirect",
        "A ws:// or wss:// URL: every WebSocket client is sent there with\n<close see-other-uri=…/> (RFC 7395 §3.6.2); empty: off.",
    ),
    (
        "http.websocket_max_message",
        "Bytes of one WebSocket message (at least c2s.max_stanza_size).",
    ),
    (
        "http.bosh_max_wait",
        "Longest wait (seconds) a BOSH client may ask for (XEP-0124 §7.1).",
    ),
    (
        "http.bosh_max_hold",
        "Most requests a BOSH session keeps waiting (hold, XEP-0124 §7.1).",
    ),
    (
        "http.bosh_max_inactivity",
        "Seconds a BOSH session may go without a request before it ends.",
    ),
    (
        "http.bosh_max_pause",
        "Longest pause (seconds) a BOSH client may ask for (XEP-0124 §10).",
    ),
    (
        "http.bosh_max_sessions",
        "BOSH sessions at once; beyond, a new one gets a terminate with\nservice-unavailable.",
    ),
    (
        "http.bosh_max_queued_bytes",
        "Bytes waiting for a BOSH client to fetch them; beyond, the session ends\n(a client that stopped reading).",
    ),
    (
        "s2s",
        "Server-to-server federation (docs/federation.md): STARTTLS and direct TLS\n(XEP-0368) streams, SASL EXTERNAL and dialback (XEP-0220), bidirectional\nstreams (XEP-0288).",
    ),
    (
        "s2s.listen",
        "STARTTLS listeners for other servers (RFC 6120; port 5269).",
    ),
    (
        "s2s.direct_tls_listen",
        "Direct TLS listeners for other servers (XEP-0368, _xmpps-server; often 5270).",
    ),
    (
        "s2s.secure_auth",
        "Peers must prove their name with a valid certificate (SASL EXTERNAL, or\ndialback over a verified TLS connection); false also accepts dialback\nwithout one (Prosody's s2s_secure_auth).",
    ),
    (
        "s2s.ca_file",
        "Extra trusted CA certificates (PEM) beside the system roots; empty: none.",
    ),
    (
        "s2s.insecure_domains",
        "Remote domains exempt from secure_auth (dialback accepted without a valid\ncertificate).",
    ),
    (
        "s2s.secure_domains",
        "Remote domains that must present a valid certificate even when secure_auth\nis false.",
    ),
    (
        "s2s.require_encryption",
        "Refuse and do not attempt server streams without TLS.",
    ),
    (
        "s2s.bidi",
        "Offer and use bidirectional server streams (XEP-0288).",
    ),
    (
        "s2s.idle_timeout",
        "Seconds a server stream may go without traffic before it is closed.",
    ),
    (
        "s2s.connect_timeout",
        "Seconds an outgoing connection may take from DNS to authenticated; then its\nqueued stanzas are bounced with remote-server-timeout.",
    ),
    (
        "s2s.max_stanza_size",
        "Bytes of one stanza from another server.",
    ),
    (
        "s2s.max_queued_bytes",
        "Bytes queued for a remote domain while its connection is being set up;\nbeyond, stanzas are bounced with resource-constraint.",
    ),
    (
        "s2s.max_connections_per_domain",
        "Incoming streams open at once from one remote domain; beyond, refused\n(policy-violation).",
    ),
    (
        "s2s.max_dialback_attempts",
        "Dialback requests one incoming stream may make; beyond, policy-violation.",
    ),
    (
        "s2s.rate",
        "Read rate per server connection (units as limits.c2s.rate).",
    ),
    (
        "s2s.burst",
        "How long a full read bucket lasts at s2s.rate.",
    ),
    (
        "dns",
        "DNS for outgoing server connections: SRV (RFC 2782, XEP-0368), A/AAAA, TLSA.",
    ),
    (
        "dns.servers",
        "Name servers (IP or IP:PORT); empty: those of /etc/resolv.conf.",
    ),
    (
        "dns.dane",
        "Check DANE-TLSA records (RFC 7673) of peers when the answers are\nDNSSEC-validated.",
    ),
    (
        "component",
        "External components (XEP-0114): gateways and bots with their own domain.",
    ),
    (
        "component.listen",
        "Listeners for external components (usually 127.0.0.1:5347); empty: off.",
    ),
    (
        "components",
        "External components by domain: [components.\"gateway.example.org\"] with\nsecret (the handshake's shared secret), parent (the host whose disco#items\nlists it) and name.",
    ),
    ("metrics", "Metrics for Prometheus and the like."),
    (
        "metrics.listen",
        "IP:PORT serving /metrics (OpenMetrics text); empty: off. Never on the\npublic HTTP listeners.",
    ),
    (
        "cluster",
        "Cluster mode (docs/cluster.md): nodes sharing one PostgreSQL and one NATS\nserve the same domains.",
    ),
    (
        "cluster.nats_url",
        "NATS server URL(s), comma-separated, e.g. \"nats://127.0.0.1:4222\"; empty:\na single node.",
    ),
    (
        "cluster.node_name",
        "This node's name, unique in the cluster; empty: the host name.",
    ),
    (
        "cluster.subject_prefix",
        "Prefix of the NATS subjects this cluster uses.",
    ),
    (
        "cluster.heartbeat_ms",
        "Milliseconds between this node's heartbeats.",
    ),
    (
        "cluster.node_timeout_ms",
        "Milliseconds without a heartbeat after which a node counts as dead: its\nsessions are gone for the others and its rooms move.",
    ),
    (
        "cluster.max_forward_bytes",
        "Largest stanza forwarded between nodes.",
    ),
    ("csi", "Client state indication (XEP-0352)."),
    (
        "csi.max_held",
        "Presence updates and chat states held back for an inactive client; one more\nflushes them all.",
    ),
    ("delivery", "Message delivery (RFC 6121 §8.5)."),
    (
        "delivery.chat_to_all_highest_priority",
        "A chat message to a bare JID reaches every resource of the highest priority\n(false: only one of them).",
    ),
    ("roster", "Rosters (RFC 6121 §2)."),
    (
        "roster.max_items",
        "Items per roster; adding more is refused with not-allowed.",
    ),
    (
        "roster.max_pending",
        "Inbound subscription requests kept pending per account; a request from a new\ncontact beyond is dropped (neither stored nor delivered).",
    ),
    ("offline", "Offline messages (XEP-0160)."),
    (
        "offline.max_messages",
        "Messages kept per account while it is offline; beyond, the sender gets\nservice-unavailable.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").ok(), Some(Config::default()));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[c2s]\nlisten = []\nlisten_typo = 1\n").err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("listen_typo"), "{msg}");
        // A top-level key that is not the core's is kept as a module section; the modules'
        // check refuses it by name when no module claims it (crate::module::check_sections).
        let c = Config::parse("bogus = 1\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sections.contains_key("bogus"));
        let e = crate::module::check_sections(&c, &[])
            .err()
            .unwrap_or_default();
        assert!(e.contains("`bogus`"), "{e}");
    }

    #[test]
    fn documented_keys_parse() {
        let c = Config::parse(
            "data_dir = \"x\"\nhosts = [\"Example.TEST\"]\n[c2s]\nlisten = [\"127.0.0.1:5222\"]\n\
             direct_tls_listen = []\nrequire_encryption = false\nmax_stanza_size = 262144\n\
             [storage]\nbackend = \"memory\"\n[log]\nlevel = \"debug\"\n",
        );
        let c = c.ok();
        assert_eq!(
            c.as_ref().map(|c| c.hosts.clone()),
            Some(vec!["example.test".to_string()])
        );
        assert_eq!(c.map(|c| c.c2s.require_encryption), Some(false));
    }

    #[test]
    fn postgresql_storage_parses() {
        let c = Config::parse(
            "[storage]\nbackend = \"postgresql\"\nurl = \"postgres://canto@db.example/canto\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.storage.url, "postgres://canto@db.example/canto");
        assert_eq!(c.storage.pool_size, 16, "the default");
        let c = Config::parse(
            "[storage]\nbackend = \"postgresql\"\nurl = \"postgresql://h/d\"\npool_size = 4\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.storage.pool_size, 4);
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("hosts = []", "hosts"),
            ("hosts = [\"a b\"]", "not a valid domain"),
            ("[storage]\nbackend = \"mysql\"", "storage.backend"),
            ("[storage]\nbackend = \"mysql\"", "\"postgresql\""),
            ("[storage]\nbackend = \"postgresql\"", "needs `storage.url`"),
            (
                "[storage]\nbackend = \"postgresql\"\nurl = \"mysql://h/db\"",
                "postgres://",
            ),
            (
                "[storage]\nbackend = \"postgresql\"\nurl = \"postgres://h/db\"\npool_size = 0",
                "pool_size",
            ),
            ("[c2s]\nlisten = [\"nowhere\"]", "IP:PORT"),
            ("[c2s]\nmax_stanza_size = 5", "max_stanza_size"),
            (
                "[stream_management]\nrequest_ack_after = 0",
                "request_ack_after",
            ),
            ("[stream_management]\nmax_unacked = 5", "max_unacked"),
            ("[register]\nmax_attempts = 0", "register.max_attempts"),
            ("[register]\nattempt_period = 0", "register.attempt_period"),
            (
                "[stream_management]\nanswer_delay_ms = 1001",
                "answer_delay_ms",
            ),
            (
                "[certificates.\"other.test\"]\ncertificate = \"a\"\nkey = \"b\"",
                "other.test",
            ),
        ] {
            let msg = Config::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(needle), "{text:?} gave {msg:?}");
        }
    }

    #[test]
    fn example_is_complete_and_parses_back_to_the_default() {
        let ex = Config::example();
        assert_eq!(Config::parse(&ex).ok(), Some(Config::default()));
        let value = toml::Value::try_from(Config::default()).ok();
        let table = value
            .as_ref()
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        for (k, v) in &table {
            assert!(DOCS.iter().any(|(d, _)| d == k), "{k} undocumented");
            if let Some(t) = v.as_table() {
                for (kk, vv) in t {
                    let full = format!("{k}.{kk}");
                    assert!(DOCS.iter().any(|(d, _)| *d == full), "{full} undocumented");
                    // Nested tables such as `[limits.c2s]`.
                    for kkk in vv.as_table().map(|t| t.keys()).into_iter().flatten() {
                        let full = format!("{k}.{kk}.{kkk}");
                        assert!(DOCS.iter().any(|(d, _)| *d == full), "{full} undocumented");
                    }
                }
            }
        }
        assert!(ex.contains("[limits.c2s]\n"), "{ex}");
        assert!(ex.contains("rate = \"10kb/s\""), "{ex}");
    }

    #[test]
    fn rates_parse_with_units_case_insensitively() {
        for (text, want) in [
            ("10kb/s", Some(10_000)),
            ("10KB/s", Some(10_000)),
            ("10 kb/s", Some(10_000)),
            ("512b/s", Some(512)),
            ("1.5mb/s", Some(1_500_000)),
            ("2MB/s", Some(2_000_000)),
            ("1kib/s", Some(1024)),
            ("1MiB/s", Some(1_048_576)),
            ("unlimited", None),
            (" Unlimited ", None),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "10",
            "kb/s",
            "10kb",
            "10 kilobytes/s",
            "-1kb/s",
            "0kb/s",
            "0.1b/s",
            "1e3b/s",
            "10gb/s/s",
            "1.2.3kb/s",
            "99999999mb/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bursts_parse_in_seconds_and_milliseconds() {
        use std::time::Duration;
        for (text, want) in [
            ("2s", Duration::from_secs(2)),
            ("2S", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            ("500 ms", Duration::from_millis(500)),
        ] {
            assert_eq!(parse_burst(text), Ok(want), "{text:?}");
        }
        for bad in [
            "", "2", "s", "ms", "0s", "-1s", "2m", "2 h", "1e1s", "3601s", "0.5ms",
        ] {
            assert!(parse_burst(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn services_default_per_host_are_switched_off_added_and_checked() {
        let c = Config::parse("hosts = [\"a.example\", \"b.example\"]")
            .unwrap_or_else(|e| panic!("{e}"));
        let domains = |c: &Config| -> Vec<(String, String)> {
            c.services_of_kind("pubsub")
                .into_iter()
                .map(|s| (s.domain, s.parent))
                .collect()
        };
        assert_eq!(
            domains(&c),
            vec![
                ("pubsub.a.example".into(), "a.example".into()),
                ("pubsub.b.example".into(), "b.example".into())
            ]
        );
        let c = Config::parse(
            "hosts = [\"a.example\", \"b.example\"]\n\
             [services.\"pubsub.b.example\"]\nenabled = false\n\
             [services.\"News.B.Example\"]\nkind = \"pubsub\"\nname = \"News\"\n\
             [services.\"feeds.elsewhere.org\"]\nkind = \"pubsub\"\nparent = \"b.example\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            domains(&c),
            vec![
                ("feeds.elsewhere.org".into(), "b.example".into()),
                ("news.b.example".into(), "b.example".into()),
                ("pubsub.a.example".into(), "a.example".into()),
            ]
        );
        // Group chat is a kind of its own: conference.HOST by default, switched off alike.
        let muc = |c: &Config| -> Vec<String> {
            c.services_of_kind("muc")
                .into_iter()
                .map(|s| s.domain)
                .collect()
        };
        assert_eq!(
            muc(&c),
            vec!["conference.a.example", "conference.b.example"]
        );
        let c = Config::parse(
            "hosts = [\"a.example\"]\n[services.\"conference.a.example\"]\nenabled = false\n\
             [services.\"rooms.a.example\"]\nkind = \"muc\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(muc(&c), vec!["rooms.a.example"]);
        // So is file upload (XEP-0363): upload.HOST by default.
        let upload = |c: &Config| -> Vec<String> {
            c.services_of_kind("upload")
                .into_iter()
                .map(|s| s.domain)
                .collect()
        };
        assert_eq!(upload(&c), vec!["upload.a.example"]);
        let c2 = Config::parse(
            "hosts = [\"a.example\"]\n[services.\"upload.a.example\"]\nenabled = false\n\
             [services.\"files.a.example\"]\nkind = \"upload\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(upload(&c2), vec!["files.a.example"]);
        assert_eq!(
            domains(&c),
            vec![("pubsub.a.example".into(), "a.example".into())]
        );
        for (bad, key) in [
            ("[services.\"x.localhost\"]\nkind = \"chat\"", "kind"),
            ("[services.\"x.localhost\"]\nname = \"X\"", "needs a `kind`"),
            ("[services.\"localhost\"]\nkind = \"pubsub\"", "is a host"),
            (
                "[services.\"x.localhost\"]\nkind = \"pubsub\"\nparent = \"nowhere\"",
                "parent",
            ),
            (
                "[services.\"x.localhost\"]\nkind = \"pubsub\"\nport = 1",
                "port",
            ),
        ] {
            let e = Config::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn limits_c2s_table_parses_and_errors_name_the_key() {
        let c = Config::parse("[limits.c2s]\nrate = \"20KB/s\"\nburst = \"1s\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let l = c.limits.c2s.limit();
        assert_eq!(l.map(|l| l.bytes_per_second), Some(20_000));
        assert_eq!(l.map(|l| l.capacity()), Some(20_000));
        let c =
            Config::parse("[limits.c2s]\nrate = \"unlimited\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.limits.c2s.limit(), None);
        // The default: 10 kB/s with a 2 s burst (Prosody's c2s example).
        let d = Config::default().limits.c2s.limit();
        assert_eq!(d.map(|l| l.capacity()), Some(20_000));
        for (text, needle) in [
            ("[limits.c2s]\nrate = \"fast\"", "limits.c2s.rate"),
            ("[limits.c2s]\nburst = \"forever\"", "limits.c2s.burst"),
            ("[limits.c2s]\nburst = \"0s\"", "limits.c2s.burst"),
            ("[limits.c2s]\nrat = \"1kb/s\"", "rat"),
            ("[limits.c2s]\nrate = 10", "rate"),
            (
                "[limits]\nconnection_limit_exempt = [\"10.0.0.0/33\"]",
                "connection_limit_exempt",
            ),
            (
                "[limits]\nconnection_limit_exempt = [\"nowhere\"]",
                "connection_limit_exempt",
            ),
            ("[c2s]\nidle_timeout = 0", "idle_timeout"),
            ("[c2s]\nping_timeout = 0", "ping_timeout"),
        ] {
            let msg = Config::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(needle), "{text:?} gave {msg:?}");
        }
        // A value built in code that does not parse falls back to the safe default.
        let mut c = Config::default();
        c.limits.c2s.rate = "bogus".into();
        assert_eq!(c.limits.c2s.limit(), d);
    }

    #[test]
    fn connection_limit_exemptions_match_ranges() {
        let l = LimitsConfig::default();
        let ip = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(l.connection_limit_exempt(ip("127.0.0.1")));
        assert!(l.connection_limit_exempt(ip("127.3.2.1")));
        assert!(l.connection_limit_exempt(ip("::1")));
        assert!(l.connection_limit_exempt(ip("::ffff:127.0.0.1")));
        assert!(!l.connection_limit_exempt(ip("192.0.2.1")));
        assert!(!l.connection_limit_exempt(ip("2001:db8::1")));
        let l = LimitsConfig {
            connection_limit_exempt: vec!["192.0.2.0/24".into(), "2001:db8::7".into()],
            ..LimitsConfig::default()
        };
        assert!(l.connection_limit_exempt(ip("192.0.2.200")));
        assert!(!l.connection_limit_exempt(ip("192.0.3.1")));
        assert!(l.connection_limit_exempt(ip("2001:db8::7")));
        assert!(!l.connection_limit_exempt(ip("2001:db8::8")));
        assert!(!l.connection_limit_exempt(ip("127.0.0.1")));
        assert!(cidr_contains(ip("0.0.0.0"), 0, ip("203.0.113.9")));
    }
}

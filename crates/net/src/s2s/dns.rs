//! DNS for outgoing server connections (see `s2s/mod.rs`).
//!
//! - [`Resolver`]: the seam. [`HickoryResolver`] asks real name servers (hickory-resolver);
//!   [`StaticResolver`] answers from a table, for tests here and in other crates.
//! - [`targets`]: where a remote domain's server lives — `_xmpps-server` and `_xmpp-server` SRV
//!   records merged as XEP-0368 says, ordered by RFC 2782, or the domain itself on 5269
//!   (RFC 6120 §3.2.2).
//! - [`connect`] / [`connect_any`]: a TCP connection to a target, racing its addresses by happy
//!   eyeballs (RFC 8305).
//! - [`tlsa_for`]: a target's DANE-TLSA records (RFC 7673), only when DNSSEC vouches for them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use canto_core::config::DnsConfig;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::net::TcpStream;

/// The s2s port when there are no SRV records (RFC 6120 §3.2.2, §14.7).
pub const DEFAULT_PORT: u16 = 5269;

/// The delay before the next connection attempt starts while the previous one is still
/// pending: RFC 8305 §8 recommends 250 ms.
pub const DEFAULT_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// RFC 8305 §5: the connection attempt delay MUST NOT be below 10 ms.
const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(10);

/// The SRV service of XMPP server-to-server with STARTTLS (RFC 6120 §3.2.1).
pub const SERVICE_STARTTLS: &str = "_xmpp-server._tcp";

/// The SRV service of XMPP server-to-server with direct TLS (XEP-0368).
pub const SERVICE_DIRECT_TLS: &str = "_xmpps-server._tcp";

/// Time for one name server to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The bound on one lookup through [`HickoryResolver`], retries and DNSSEC chasing included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers kept in the resolver's cache.
const CACHE_SIZE: u64 = 1024;

/// The longest a negative answer is cached, so that newly published records are seen soon.
const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Types

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among the records of the same priority.
    pub weight: u16,
    /// The port of the service on `target`.
    pub port: u16,
    /// The host, without the trailing dot; `"."` means "no service here".
    pub target: String,
}

impl SrvRecord {
    /// A record, for tests and [`StaticResolver`].
    pub fn new(priority: u16, weight: u16, port: u16, target: impl Into<String>) -> Self {
        Self {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    /// RFC 2782: a target of "." (the root) means the service is decidedly not available.
    fn is_root(&self) -> bool {
        self.target.is_empty() || self.target == "."
    }
}

/// One TLSA record (RFC 6698 §2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218).
    pub usage: u8,
    /// 0 the full certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact match, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

/// An answer and whether DNSSEC validated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    /// The records of the requested type.
    pub records: T,
    /// True when every record of the answer (and any CNAME chain leading to it) was validated
    /// by DNSSEC from the root trust anchor. [`HickoryResolver`] validates only with
    /// `[dns] dane = true`; otherwise this is always false.
    pub secure: bool,
}

/// Why a lookup gave no records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN).
    #[error("{0}: no such domain")]
    NxDomain(String),
    /// The name exists but has no records of the requested type.
    #[error("{0}: no records of the requested type")]
    NoRecords(String),
    /// A single SRV record with target "." (RFC 2782): the service is decidedly not available
    /// at this domain.
    #[error("{0}: the service is decidedly not available (SRV target \".\")")]
    NotAvailable(String),
    /// DNSSEC validation failed: the answer is bogus (RFC 4035 §4.3).
    #[error("{0}: DNSSEC validation failed")]
    Bogus(String),
    /// No answer in time.
    #[error("{0}: DNS lookup timed out")]
    Timeout(String),
    /// Any other failure (SERVFAIL, REFUSED, network errors, a name DNS can't carry).
    #[error("{name}: DNS lookup failed: {reason}")]
    Failed {
        /// The name looked up.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

impl DnsError {
    /// The name is known not to offer the service: the caller bounces with
    /// `remote-server-not-found`.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NxDomain(_) | Self::NoRecords(_) | Self::NotAvailable(_)
        )
    }

    /// The lookup timed out: the caller may bounce with `remote-server-timeout`.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    fn io_kind(&self) -> io::ErrorKind {
        match self {
            Self::NxDomain(_) | Self::NoRecords(_) | Self::NotAvailable(_) => {
                io::ErrorKind::NotFound
            }
            Self::Timeout(_) => io::ErrorKind::TimedOut,
            Self::Bogus(_) | Self::Failed { .. } => io::ErrorKind::Other,
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

/// Where to connect for a remote domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// A host name (no trailing dot) or an IP address.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// XEP-0368: TLS at once (from `_xmpps-server`), else STARTTLS (RFC 6120 §5).
    pub direct_tls: bool,
    /// The SRV answer this target came from was DNSSEC-validated (RFC 7673 §3.1); false for
    /// the fallback to the domain itself.
    pub secure: bool,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        f.write_str(if self.direct_tls {
            " (direct TLS)"
        } else {
            " (STARTTLS)"
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The resolver seam

/// DNS lookups the s2s code needs. Implementations return [`DnsError::NoRecords`] or
/// [`DnsError::NxDomain`] rather than an empty list (callers treat an empty list the same way).
#[async_trait]
pub trait Resolver: Send + Sync {
    /// SRV records of `name` (e.g. `_xmpp-server._tcp.example.org`).
    async fn srv(&self, name: &str) -> Result<Answer<Vec<SrvRecord>>, DnsError>;

    /// A and AAAA records of `host`. `secure` only if every answered family was validated.
    async fn ips(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, DnsError>;

    /// TLSA records of `name` (e.g. `_5269._tcp.xmpp.example.org`).
    async fn tlsa(&self, name: &str) -> Result<Answer<Vec<Tlsa>>, DnsError>;
}

/// Lower case, no trailing dot: the form names are compared in.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An IP address written as a host: `192.0.2.1`, `2001:db8::1` or `[2001:db8::1]`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// hickory-resolver

/// [`Resolver`] over hickory-resolver: the name servers of `/etc/resolv.conf`, or `[dns]
/// servers`, over UDP then TCP, with a small cache and bounded timeouts. With `[dns] dane`,
/// answers are DNSSEC-validated from the root trust anchor and [`Answer::secure`] tells.
///
/// Construction is inert: [`HickoryResolver::new`] only reads the configuration (and
/// `/etc/resolv.conf`). The hickory resolver itself — its sockets and the background tasks
/// serving them, on the caller's tokio runtime — comes into being on the first lookup, so no
/// DNS work starts before the server asks for it (after the signal handlers are installed).
/// hickory starts no threads of its own.
pub struct HickoryResolver {
    config: ResolverConfig,
    opts: ResolverOpts,
    lookup_timeout: Duration,
    inner: OnceLock<TokioResolver>,
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("servers", &self.config.name_servers().len())
            .field("validate", &self.opts.validate)
            .field("started", &self.inner.get().is_some())
            .finish()
    }
}

/// `IP` or `IP:PORT` (`[v6]:PORT`), port 53 by default.
fn parse_server(server: &str) -> Option<SocketAddr> {
    server.parse::<SocketAddr>().ok().or_else(|| {
        server
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl HickoryResolver {
    /// A resolver for `config`: `servers` if set, else those of `/etc/resolv.conf`. Fails on a
    /// server entry that isn't `IP` or `IP:PORT`, or an unreadable `/etc/resolv.conf`. Starts
    /// nothing (see the type's documentation).
    pub fn new(config: &DnsConfig) -> Result<Self, DnsError> {
        let (resolver_config, mut opts) = if config.servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| DnsError::Failed {
                name: "/etc/resolv.conf".into(),
                reason: e.to_string(),
            })?
        } else {
            let mut servers = Vec::with_capacity(config.servers.len());
            for entry in &config.servers {
                let addr = parse_server(entry).ok_or_else(|| DnsError::Failed {
                    name: entry.clone(),
                    reason: "`dns.servers` entries are IP or IP:PORT".into(),
                })?;
                // UDP first; TCP when the answer is truncated (RFC 7766 §5).
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                servers.push(server);
            }
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 2;
        opts.cache_size = CACHE_SIZE;
        opts.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
        opts.try_tcp_on_error = true;
        // DANE needs validated answers (RFC 7673 §3); without it, no DNSSEC work at all.
        opts.validate = config.dane;
        Ok(Self {
            config: resolver_config,
            opts,
            lookup_timeout: LOOKUP_TIMEOUT,
            inner: OnceLock::new(),
        })
    }

    /// Shorter timeouts, for tests of silent servers.
    #[cfg(test)]
    fn with_timeouts(mut self, query: Duration, lookup: Duration) -> Self {
        self.opts.timeout = query;
        self.lookup_timeout = lookup;
        self
    }

    /// The hickory resolver, built on first use.
    fn resolver(&self) -> Result<&TokioResolver, DnsError> {
        if let Some(resolver) = self.inner.get() {
            return Ok(resolver);
        }
        let resolver = TokioResolver::builder_with_config(
            self.config.clone(),
            TokioRuntimeProvider::default(),
        )
        .with_options(self.opts.clone())
        .build()
        .map_err(|e| DnsError::Failed {
            name: "resolver".into(),
            reason: e.to_string(),
        })?;
        // Two first lookups at once may both build one; the loser is dropped unused.
        Ok(self.inner.get_or_init(|| resolver))
    }

    /// The records of `rtype` at `name` and whether the answer was validated.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<(Vec<RData>, bool), DnsError> {
        let shown = normalize(name);
        // Fully qualified: no search-domain expansion of s2s names.
        let fqdn = format!("{shown}.");
        let resolver = self.resolver()?;
        let lookup =
            match tokio::time::timeout(self.lookup_timeout, resolver.lookup(fqdn, rtype)).await {
                Err(_) => return Err(DnsError::Timeout(shown)),
                Ok(Err(e)) => return Err(map_net_error(shown, e)),
                Ok(Ok(lookup)) => lookup,
            };
        let answers = lookup.answers();
        // RFC 7673 §3.1: the whole answer, a CNAME chain included, must be secure.
        let secure = !answers.is_empty() && answers.iter().all(|r| r.proof == Proof::Secure);
        let records: Vec<RData> = answers
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r: &Record| r.data.clone())
            .collect();
        if records.is_empty() {
            return Err(DnsError::NoRecords(shown));
        }
        Ok((records, secure))
    }
}

fn map_net_error(name: String, error: NetError) -> DnsError {
    if error.is_nx_domain() {
        return DnsError::NxDomain(name);
    }
    match error {
        NetError::Dns(HickoryDnsError::NoRecordsFound(_)) => DnsError::NoRecords(name),
        // A (validated or not) proof of non-existence.
        NetError::Dns(HickoryDnsError::Nsec { .. }) => DnsError::NoRecords(name),
        NetError::Dns(HickoryDnsError::DnssecBogus) => DnsError::Bogus(name),
        NetError::Timeout => DnsError::Timeout(name),
        other => DnsError::Failed {
            name,
            reason: other.to_string(),
        },
    }
}

#[async_trait]
impl Resolver for HickoryResolver {
    async fn srv(&self, name: &str) -> Result<Answer<Vec<SrvRecord>>, DnsError> {
        let (data, secure) = self.lookup(name, RecordType::SRV).await?;
        let records = data
            .into_iter()
            .filter_map(|d| match d {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: match srv.target.to_ascii().trim_end_matches('.') {
                        "" => ".".to_owned(),
                        t => t.to_ascii_lowercase(),
                    },
                }),
                _ => None,
            })
            .collect();
        Ok(Answer { records, secure })
    }

    async fn ips(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, DnsError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(Answer {
                records: vec![ip],
                secure: false,
            });
        }
        // RFC 8305 §3: AAAA and A queried together.
        let (v6, v4) = tokio::join!(
            self.lookup(host, RecordType::AAAA),
            self.lookup(host, RecordType::A)
        );
        merge_families(host, v6, v4)
    }

    async fn tlsa(&self, name: &str) -> Result<Answer<Vec<Tlsa>>, DnsError> {
        let (data, secure) = self.lookup(name, RecordType::TLSA).await?;
        let records = data
            .into_iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data,
                }),
                _ => None,
            })
            .collect();
        Ok(Answer { records, secure })
    }
}

/// The A and AAAA answers as one: addresses when either family has some; else the more telling
/// error (a failure over "no records", so that a broken resolver isn't read as "no such host").
fn merge_families(
    host: &str,
    v6: Result<(Vec<RData>, bool), DnsError>,
    v4: Result<(Vec<RData>, bool), DnsError>,
) -> Result<Answer<Vec<IpAddr>>, DnsError> {
    let mut records = Vec::new();
    let mut secure = true;
    let mut errors = Vec::new();
    for family in [v6, v4] {
        match family {
            Ok((data, family_secure)) => {
                secure &= family_secure;
                records.extend(data.iter().filter_map(|d| d.ip_addr()));
            }
            Err(e) => errors.push(e),
        }
    }
    if !records.is_empty() {
        return Ok(Answer { records, secure });
    }
    let error = errors
        .iter()
        .find(|e| !e.is_not_found())
        .or_else(|| errors.iter().find(|e| matches!(e, DnsError::NoRecords(_))))
        .or(errors.first())
        .cloned();
    Err(error.unwrap_or_else(|| DnsError::NoRecords(normalize(host))))
}

// ---------------------------------------------------------------------------------------------
// A resolver for tests

/// How a [`StaticResolver`] treats queries for one name.
#[derive(Clone, Debug)]
enum Behaviour {
    Delay(Duration),
    Hang,
    Fail(DnsError),
}

#[derive(Clone, Debug, Default)]
struct Entry {
    srv: Option<Vec<SrvRecord>>,
    ips: Option<Vec<IpAddr>>,
    tlsa: Option<Vec<Tlsa>>,
}

/// A [`Resolver`] answering from a table, for tests: built with [`StaticResolver::srv`],
/// [`ips`](StaticResolver::ips), [`tlsa`](StaticResolver::tlsa), then shared (`Arc`). A name
/// it doesn't know is NXDOMAIN; a known name without records of the asked type is
/// [`DnsError::NoRecords`]. Names compare case-insensitively, trailing dots ignored. It logs
/// the queries it gets ([`StaticResolver::queries`]).
#[derive(Debug, Default)]
pub struct StaticResolver {
    entries: HashMap<String, Entry>,
    behaviour: HashMap<String, Behaviour>,
    secure: bool,
    secure_names: HashMap<String, bool>,
    queries: Mutex<Vec<String>>,
}

impl StaticResolver {
    /// An empty table: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// SRV records for `name` (e.g. `_xmpp-server._tcp.example.org`); an empty list makes the
    /// name exist without records.
    pub fn srv(mut self, name: &str, records: Vec<SrvRecord>) -> Self {
        self.entries.entry(normalize(name)).or_default().srv = Some(records);
        self
    }

    /// A/AAAA records for `host`.
    pub fn ips(mut self, host: &str, addresses: Vec<IpAddr>) -> Self {
        self.entries.entry(normalize(host)).or_default().ips = Some(addresses);
        self
    }

    /// TLSA records for `name` (e.g. `_5269._tcp.xmpp.example.org`).
    pub fn tlsa(mut self, name: &str, records: Vec<Tlsa>) -> Self {
        self.entries.entry(normalize(name)).or_default().tlsa = Some(records);
        self
    }

    /// Whether answers are DNSSEC-validated (default false).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether the answers for `name` are validated, overriding [`StaticResolver::secure`].
    pub fn secure_name(mut self, name: &str, secure: bool) -> Self {
        self.secure_names.insert(normalize(name), secure);
        self
    }

    /// Answers for `name` come after `delay`.
    pub fn delay(mut self, name: &str, delay: Duration) -> Self {
        self.behaviour
            .insert(normalize(name), Behaviour::Delay(delay));
        self
    }

    /// Queries for `name` never complete (to test the callers' timeouts and cancellation).
    pub fn hang(mut self, name: &str) -> Self {
        self.behaviour.insert(normalize(name), Behaviour::Hang);
        self
    }

    /// Queries for `name` fail with `error`.
    pub fn fail(mut self, name: &str, error: DnsError) -> Self {
        self.behaviour
            .insert(normalize(name), Behaviour::Fail(error));
        self
    }

    /// The queries so far, as `TYPE name` (`SRV _xmpp-server._tcp.example.org`, `IP host`,
    /// `TLSA _5269._tcp.host`), in order.
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Logs the query, applies the name's behaviour, and returns its entry.
    async fn answer<T>(
        &self,
        kind: &str,
        name: &str,
        pick: impl Fn(&Entry) -> Option<&Vec<T>>,
    ) -> Result<Answer<Vec<T>>, DnsError>
    where
        T: Clone,
    {
        let name = normalize(name);
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{kind} {name}"));
        match self.behaviour.get(&name) {
            Some(Behaviour::Delay(d)) => tokio::time::sleep(*d).await,
            Some(Behaviour::Hang) => std::future::pending::<()>().await,
            Some(Behaviour::Fail(e)) => return Err(e.clone()),
            None => {}
        }
        let entry = self
            .entries
            .get(&name)
            .ok_or_else(|| DnsError::NxDomain(name.clone()))?;
        match pick(entry) {
            Some(records) if !records.is_empty() => Ok(Answer {
                records: records.clone(),
                secure: self.secure_names.get(&name).copied().unwrap_or(self.secure),
            }),
            _ => Err(DnsError::NoRecords(name)),
        }
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn srv(&self, name: &str) -> Result<Answer<Vec<SrvRecord>>, DnsError> {
        self.answer("SRV", name, |e| e.srv.as_ref()).await
    }

    async fn ips(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, DnsError> {
        self.answer("IP", host, |e| e.ips.as_ref()).await
    }

    async fn tlsa(&self, name: &str) -> Result<Answer<Vec<Tlsa>>, DnsError> {
        self.answer("TLSA", name, |e| e.tlsa.as_ref()).await
    }
}

#[async_trait]
impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    async fn srv(&self, name: &str) -> Result<Answer<Vec<SrvRecord>>, DnsError> {
        (**self).srv(name).await
    }

    async fn ips(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, DnsError> {
        (**self).ips(host).await
    }

    async fn tlsa(&self, name: &str) -> Result<Answer<Vec<Tlsa>>, DnsError> {
        (**self).tlsa(name).await
    }
}

// ---------------------------------------------------------------------------------------------
// Targets

/// What one of the two SRV lookups said.
enum SrvOutcome {
    /// Usable records (root targets dropped), and whether the answer was secure.
    Records(Vec<SrvRecord>, bool),
    /// RFC 2782: exactly one record, with target ".": decidedly not available.
    Refused,
    /// No records (NXDOMAIN or an empty answer).
    Absent,
    /// The lookup failed.
    Failed(DnsError),
}

fn srv_outcome(result: Result<Answer<Vec<SrvRecord>>, DnsError>) -> SrvOutcome {
    match result {
        Ok(answer) => {
            // RFC 2782 (usage rules): "If there is precisely one SRV RR, and its Target is "."
            // (the root domain), abort."
            if let [only] = answer.records.as_slice()
                && only.is_root()
            {
                return SrvOutcome::Refused;
            }
            // A root target among others is meaningless: skip it.
            let records: Vec<SrvRecord> = answer
                .records
                .into_iter()
                .filter(|r| !r.is_root())
                .collect();
            if records.is_empty() {
                SrvOutcome::Absent
            } else {
                SrvOutcome::Records(records, answer.secure)
            }
        }
        Err(e) if e.is_not_found() => SrvOutcome::Absent,
        Err(e) => SrvOutcome::Failed(e),
    }
}

/// Where to connect for `domain`, best first: the SRV records of `_xmpps-server._tcp.DOMAIN`
/// (direct TLS) and `_xmpp-server._tcp.DOMAIN` (STARTTLS), looked up concurrently and mixed as
/// one set (XEP-0368 §3), ordered by priority and, within a priority, by RFC 2782's weighted
/// random selection, duplicates removed; without SRV records, `DOMAIN:5269` with STARTTLS
/// (RFC 6120 §3.2.2). An IP literal domain is its own target (no SRV lookup).
///
/// Errors: [`DnsError::NotAvailable`] when the records say the service is not offered (a "."
/// target, RFC 2782), [`DnsError::Bogus`] when DNSSEC says the SRV answer is forged
/// (RFC 7673 §3.1: abort). Other lookup failures fall back to the domain itself, as
/// RFC 6120 §3.2.1 asks when no SRV response is received.
pub async fn targets(resolver: &dyn Resolver, domain: &str) -> Result<Vec<Target>, DnsError> {
    if let Some(ip) = ip_literal(domain) {
        return Ok(vec![fallback_target(ip.to_string())]);
    }
    let domain = normalize(domain);
    let direct_name = format!("{SERVICE_DIRECT_TLS}.{domain}");
    let starttls_name = format!("{SERVICE_STARTTLS}.{domain}");
    // XEP-0368 §3: both services are looked up; concurrently, to save a round trip.
    let (direct, starttls) = tokio::join!(resolver.srv(&direct_name), resolver.srv(&starttls_name));
    let merged = merge_srv(&domain, srv_outcome(direct), srv_outcome(starttls))?;
    Ok(match merged {
        None => vec![fallback_target(domain)],
        Some(records) => order_targets(records, &mut rand::rng()),
    })
}

/// RFC 6120 §3.2.2: the domain itself, on the default port, with STARTTLS.
fn fallback_target(host: String) -> Target {
    Target {
        host,
        port: DEFAULT_PORT,
        direct_tls: false,
        secure: false,
    }
}

/// A record tagged with its service and security, before ordering.
#[derive(Clone, Debug)]
struct Candidate {
    record: SrvRecord,
    direct_tls: bool,
    secure: bool,
}

/// The two SRV outcomes as one candidate set; `None`: fall back to the domain itself.
fn merge_srv(
    domain: &str,
    direct: SrvOutcome,
    starttls: SrvOutcome,
) -> Result<Option<Vec<Candidate>>, DnsError> {
    // RFC 7673 §3.1: a bogus SRV answer aborts the connection attempt, no fallback.
    for outcome in [&direct, &starttls] {
        if let SrvOutcome::Failed(e @ DnsError::Bogus(_)) = outcome {
            return Err(e.clone());
        }
    }
    let mut candidates = Vec::new();
    for (outcome, direct_tls) in [(&direct, true), (&starttls, false)] {
        if let SrvOutcome::Records(records, secure) = outcome {
            candidates.extend(records.iter().map(|record| Candidate {
                record: record.clone(),
                direct_tls,
                secure: *secure,
            }));
        }
    }
    if !candidates.is_empty() {
        // XEP-0368 §3 rule 1: xmpps- and xmpp- records are one set for ordering purposes.
        return Ok(Some(candidates));
    }
    match (direct, starttls) {
        // RFC 6120 §3.2.1 step 3 / RFC 2782: "." for the STARTTLS service is an abort, and no
        // direct TLS records stand in for it.
        (_, SrvOutcome::Refused) => Err(DnsError::NotAvailable(domain.to_owned())),
        // XEP-0368 §5 (implementation notes): "." for _xmpps-server means no direct TLS; the
        // _xmpp-server records are used instead, and without them there is no A/AAAA fallback.
        (SrvOutcome::Refused, SrvOutcome::Failed(e)) => Err(e),
        (SrvOutcome::Refused, _) => Err(DnsError::NotAvailable(domain.to_owned())),
        // RFC 6120 §3.2.2: no SRV records (or no SRV response at all, §3.2.1): the fallback.
        _ => Ok(None),
    }
}

/// Candidates ordered as RFC 2782 says, deduplicated, as targets.
fn order_targets<R: Rng + ?Sized>(mut candidates: Vec<Candidate>, rng: &mut R) -> Vec<Target> {
    // RFC 2782: "Sort the list by priority (lowest number first)".
    candidates.sort_by_key(|c| c.record.priority);
    let mut ordered = Vec::with_capacity(candidates.len());
    let mut rest = candidates.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|c| c.record.priority == first.record.priority)
            .count();
        let (group, tail) = rest.split_at(same);
        weighted_order(group.to_vec(), rng, &mut ordered);
        rest = tail;
    }
    let mut seen = HashSet::new();
    ordered
        .into_iter()
        .map(|c| Target {
            host: normalize(&c.record.target),
            port: c.record.port,
            direct_tls: c.direct_tls,
            secure: c.secure,
        })
        // The same host, port and method twice (e.g. published twice) is tried once, where it
        // first comes.
        .filter(|t| seen.insert((t.host.clone(), t.port, t.direct_tls)))
        .collect()
}

/// RFC 2782 (Weight): repeatedly pick among the remaining records of one priority, each with a
/// chance proportional to its weight, and append the pick to `out`.
fn weighted_order<R: Rng + ?Sized>(
    mut group: Vec<Candidate>,
    rng: &mut R,
    out: &mut Vec<Candidate>,
) {
    // RFC 2782: "arrange all SRV RRs (that have not been ordered yet) in any order, except that
    // all those with weight 0 are placed at the beginning of the list". The order is shuffled
    // so that records of weight 0 only (drawn when the number is 0) share the first place.
    group.shuffle(rng);
    group.sort_by_key(|c| c.record.weight != 0);
    while !group.is_empty() {
        let total: u64 = group.iter().map(|c| u64::from(c.record.weight)).sum();
        // RFC 2782: "choose a uniform random number between 0 and the sum computed (inclusive),
        // and select the RR whose running sum value is the first in the selected order which
        // is greater than or equal to the random number selected".
        let pick = rng.random_range(0..=total);
        let mut running = 0u64;
        let index = group
            .iter()
            .position(|c| {
                running += u64::from(c.record.weight);
                running >= pick
            })
            .unwrap_or(0);
        out.push(group.remove(index));
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting

/// RFC 8305 §4: addresses interleaved by family, IPv6 first, each family in answer order;
/// duplicates dropped.
fn interleave(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    let unique: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| seen.insert(*a))
        .collect();
    let mut v6 = unique.iter().filter(|a| a.is_ipv6()).copied();
    let mut v4 = unique.iter().filter(|a| a.is_ipv4()).copied();
    let mut out = Vec::with_capacity(unique.len());
    loop {
        let (a, b) = (v6.next(), v4.next());
        if a.is_none() && b.is_none() {
            return out;
        }
        out.extend(a);
        out.extend(b);
    }
}

/// A TCP connection to `target`: its addresses (none to look up for an IP literal host) raced
/// by happy eyeballs (RFC 8305): IPv6 and IPv4 interleaved starting with IPv6 (§4), the next
/// attempt started `attempt_delay` after the previous one ([`DEFAULT_ATTEMPT_DELAY`], §8; at
/// least 10 ms, §5) or at once when it fails, the first connection wins and the others are
/// dropped (§5). No overall time limit: the caller bounds it (see [`connect_any`]).
///
/// A DNS failure is an [`io::Error`] wrapping the [`DnsError`] (`NotFound` kind for a name
/// without addresses, `TimedOut` for a timeout).
pub async fn connect(
    resolver: &dyn Resolver,
    target: &Target,
    attempt_delay: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    let addresses = match ip_literal(&target.host) {
        Some(ip) => vec![ip],
        None => {
            resolver
                .ips(&target.host)
                .await
                .map_err(DnsError::into_io)?
                .records
        }
    };
    let addresses: Vec<SocketAddr> = interleave(&addresses)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, target.port))
        .collect();
    if addresses.is_empty() {
        return Err(DnsError::NoRecords(normalize(&target.host)).into_io());
    }
    happy_eyeballs(&addresses, attempt_delay.max(MIN_ATTEMPT_DELAY)).await
}

/// Races connection attempts to `addresses` (in order) as RFC 8305 §5 describes.
async fn happy_eyeballs(
    addresses: &[SocketAddr],
    attempt_delay: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    let attempt = |addr: SocketAddr| async move { (addr, TcpStream::connect(addr).await) };
    let mut waiting = addresses.iter().copied();
    let mut running = FuturesUnordered::new();
    let mut failures: Vec<(SocketAddr, io::Error)> = Vec::new();
    if let Some(first) = waiting.next() {
        running.push(attempt(first));
    }
    while !running.is_empty() {
        let more = waiting.len() > 0;
        tokio::select! {
            Some((addr, result)) = running.next() => match result {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => {
                    failures.push((addr, e));
                    // RFC 8305 §5: a failed attempt starts the next one without waiting.
                    if let Some(next) = waiting.next() {
                        running.push(attempt(next));
                    }
                }
            },
            // RFC 8305 §5: after the connection attempt delay, the next one starts while the
            // others go on (the timer restarts on every start or failure).
            () = tokio::time::sleep(attempt_delay), if more => {
                if let Some(next) = waiting.next() {
                    running.push(attempt(next));
                }
            }
        }
    }
    let kind = failures
        .last()
        .map_or(io::ErrorKind::NotFound, |(_, e)| e.kind());
    let detail: Vec<String> = failures.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    Err(io::Error::new(
        kind,
        format!("connection failed ({})", detail.join("; ")),
    ))
}

/// Tries `targets` in order (RFC 2782, RFC 6120 §3.2.1 step 7: the next target when one
/// can't be reached), each with [`connect`] bounded by `target_timeout`. Returns the
/// connection, the peer address and the target that answered.
pub async fn connect_any(
    resolver: &dyn Resolver,
    targets: &[Target],
    attempt_delay: Duration,
    target_timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr, Target)> {
    let mut failures = Vec::new();
    let mut kind = io::ErrorKind::NotFound;
    for target in targets {
        let result = tokio::time::timeout(target_timeout, connect(resolver, target, attempt_delay))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {target_timeout:?}"),
                ))
            });
        match result {
            Ok((stream, addr)) => return Ok((stream, addr, target.clone())),
            Err(e) => {
                kind = e.kind();
                failures.push(format!("{target}: {e}"));
            }
        }
    }
    if failures.is_empty() {
        return Err(io::Error::new(kind, "no targets"));
    }
    Err(io::Error::new(kind, failures.join("; ")))
}

/// The TLSA records of `target` (`_PORT._tcp.HOST`, RFC 7673 §3.3), only when both its SRV
/// answer and the TLSA answer were DNSSEC-validated (RFC 7673 §3.1, §3.3); otherwise (an
/// insecure answer, no records, a failed lookup, a fallback target) `None`: no DANE, the
/// certificate is checked as usual.
pub async fn tlsa_for(resolver: &dyn Resolver, target: &Target) -> Option<Vec<Tlsa>> {
    // RFC 7673 §3.1: an insecure SRV answer means this protocol does not apply.
    if !target.secure || ip_literal(&target.host).is_some() {
        return None;
    }
    let name = format!("_{}._tcp.{}", target.port, normalize(&target.host));
    match resolver.tlsa(&name).await {
        Ok(answer) if answer.secure && !answer.records.is_empty() => Some(answer.records),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(%e, "no usable TLSA records for {target}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;
    use tokio::net::TcpListener;

    const DOMAIN: &str = "example.org";
    const DIRECT: &str = "_xmpps-server._tcp.example.org";
    const STARTTLS: &str = "_xmpp-server._tcp.example.org";

    fn target(host: &str, port: u16, direct_tls: bool) -> Target {
        Target {
            host: host.into(),
            port,
            direct_tls,
            secure: false,
        }
    }

    fn hosts(targets: &[Target]) -> Vec<&str> {
        targets.iter().map(|t| t.host.as_str()).collect()
    }

    fn candidates(records: &[(u16, u16, &str)]) -> Vec<Candidate> {
        records
            .iter()
            .map(|&(priority, weight, host)| Candidate {
                record: SrvRecord::new(priority, weight, 5269, host),
                direct_tls: false,
                secure: false,
            })
            .collect()
    }

    #[tokio::test]
    async fn ordered_by_priority() {
        let resolver = StaticResolver::new().srv(
            STARTTLS,
            vec![
                SrvRecord::new(30, 5, 5269, "c.example.org"),
                SrvRecord::new(10, 0, 5269, "a.example.org."),
                SrvRecord::new(20, 100, 5270, "B.example.org"),
            ],
        );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(
            t,
            vec![
                target("a.example.org", 5269, false),
                target("b.example.org", 5270, false),
                target("c.example.org", 5269, false),
            ]
        );
        // Both services were asked.
        let mut queries = resolver.queries();
        queries.sort();
        assert_eq!(
            queries,
            vec![format!("SRV {STARTTLS}"), format!("SRV {DIRECT}")]
        );
    }

    #[test]
    fn weights_share_first_place() {
        // Weights 0, 10, 90 at one priority: the first pick is "heavy" about 90% of the
        // time, "light" about 10%, and the weight-0 record only when the draw is exactly 0
        // (1/101). A fixed seed keeps the test deterministic; the bounds are loose.
        let mut rng = StdRng::seed_from_u64(2782);
        let mut first: HashMap<String, u32> = HashMap::new();
        let mut zero_last = 0;
        const RUNS: u32 = 10_000;
        for _ in 0..RUNS {
            let order = order_targets(
                candidates(&[(1, 0, "zero"), (1, 10, "light"), (1, 90, "heavy")]),
                &mut rng,
            );
            assert_eq!(order.len(), 3);
            *first.entry(order[0].host.clone()).or_default() += 1;
            if order[2].host == "zero" {
                zero_last += 1;
            }
        }
        let heavy = first.get("heavy").copied().unwrap_or(0);
        let light = first.get("light").copied().unwrap_or(0);
        let zero = first.get("zero").copied().unwrap_or(0);
        assert!((8_500..9_400).contains(&heavy), "heavy first {heavy} times");
        assert!((600..1_400).contains(&light), "light first {light} times");
        assert!(zero < 300, "weight 0 first {zero} times");
        // Weight 0 is almost always tried after the weighted ones.
        assert!(
            zero_last > RUNS * 9 / 10,
            "weight 0 last only {zero_last} times"
        );
    }

    #[test]
    fn zero_weights_all_get_a_turn() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = HashSet::new();
        for _ in 0..200 {
            let order = order_targets(
                candidates(&[(5, 0, "a"), (5, 0, "b"), (5, 0, "c")]),
                &mut rng,
            );
            first.insert(order[0].host.clone());
        }
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn weights_never_cross_priorities() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let order = order_targets(
                candidates(&[(2, 65535, "late"), (1, 0, "early"), (1, 1, "early2")]),
                &mut rng,
            );
            assert_eq!(order[2].host, "late");
        }
    }

    #[tokio::test]
    async fn xep0368_records_are_mixed_by_priority() {
        // XEP-0368 §3: direct TLS and STARTTLS records are one set; a better STARTTLS priority
        // wins over a direct TLS record.
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(10, 0, 5270, "tls.example.org")])
            .srv(
                STARTTLS,
                vec![
                    SrvRecord::new(5, 0, 5269, "first.example.org"),
                    SrvRecord::new(20, 0, 5269, "last.example.org"),
                ],
            );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(
            t,
            vec![
                target("first.example.org", 5269, false),
                target("tls.example.org", 5270, true),
                target("last.example.org", 5269, false),
            ]
        );
    }

    #[tokio::test]
    async fn xep0368_same_priority_mixes_by_weight() {
        // One priority, direct TLS weight 0 and STARTTLS weight 100: STARTTLS first nearly
        // always (the weights decide, not the service).
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 443, "xmpp.example.org")])
            .srv(
                STARTTLS,
                vec![SrvRecord::new(0, 100, 5269, "xmpp.example.org")],
            );
        let mut starttls_first = 0;
        for _ in 0..50 {
            let t = targets(&resolver, DOMAIN).await.expect("targets");
            assert_eq!(t.len(), 2, "same host, different methods: both kept");
            if !t[0].direct_tls {
                starttls_first += 1;
            }
        }
        assert!(starttls_first >= 40, "{starttls_first}");
    }

    #[tokio::test]
    async fn direct_tls_only() {
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 5223, "tls.example.org")])
            .srv(STARTTLS, vec![]);
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target("tls.example.org", 5223, true)]);
    }

    #[tokio::test]
    async fn duplicates_removed() {
        let resolver = StaticResolver::new().srv(
            STARTTLS,
            vec![
                SrvRecord::new(0, 0, 5269, "xmpp.example.org"),
                SrvRecord::new(5, 0, 5269, "XMPP.example.org."),
                SrvRecord::new(5, 0, 5270, "xmpp.example.org"),
            ],
        );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(
            t,
            vec![
                target("xmpp.example.org", 5269, false),
                target("xmpp.example.org", 5270, false),
            ]
        );
    }

    #[tokio::test]
    async fn root_target_means_not_available() {
        // RFC 2782 / RFC 6120 §3.2.1: "." for the service: abort, no fallback.
        let resolver = StaticResolver::new().srv(STARTTLS, vec![SrvRecord::new(0, 0, 0, ".")]);
        let e = targets(&resolver, DOMAIN).await.expect_err("not available");
        assert_eq!(e, DnsError::NotAvailable(DOMAIN.into()));
        assert!(e.is_not_found());

        // Both services refused.
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 0, ".")])
            .srv(STARTTLS, vec![SrvRecord::new(0, 0, 0, ".")]);
        assert!(matches!(
            targets(&resolver, DOMAIN).await,
            Err(DnsError::NotAvailable(_))
        ));

        // XEP-0368 §5: "." for direct TLS, nothing for STARTTLS: no A/AAAA fallback.
        let resolver = StaticResolver::new().srv(DIRECT, vec![SrvRecord::new(0, 0, 0, ".")]);
        assert!(matches!(
            targets(&resolver, DOMAIN).await,
            Err(DnsError::NotAvailable(_))
        ));
    }

    #[tokio::test]
    async fn root_direct_tls_uses_starttls_records() {
        // XEP-0368 §5: "." for _xmpps-server only rules out direct TLS.
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 0, ".")])
            .srv(
                STARTTLS,
                vec![SrvRecord::new(0, 0, 5269, "xmpp.example.org")],
            );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target("xmpp.example.org", 5269, false)]);

        // And "." for STARTTLS with direct TLS records: the direct TLS records.
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 5223, "tls.example.org")])
            .srv(STARTTLS, vec![SrvRecord::new(0, 0, 0, ".")]);
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target("tls.example.org", 5223, true)]);
    }

    #[tokio::test]
    async fn root_among_others_is_skipped() {
        let resolver = StaticResolver::new().srv(
            STARTTLS,
            vec![
                SrvRecord::new(0, 0, 0, "."),
                SrvRecord::new(1, 0, 5269, "xmpp.example.org"),
            ],
        );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target("xmpp.example.org", 5269, false)]);
    }

    #[tokio::test]
    async fn fallback_without_srv() {
        // RFC 6120 §3.2.2: NXDOMAIN for both services: the domain on 5269.
        let resolver = StaticResolver::new();
        let t = targets(&resolver, "Example.ORG.").await.expect("targets");
        assert_eq!(t, vec![target(DOMAIN, 5269, false)]);

        // The names exist without SRV records.
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![])
            .srv(STARTTLS, vec![]);
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target(DOMAIN, 5269, false)]);

        // RFC 6120 §3.2.1: no SRV response (failures, timeouts): the fallback too.
        let resolver = StaticResolver::new()
            .fail(DIRECT, DnsError::Timeout(DIRECT.into()))
            .fail(
                STARTTLS,
                DnsError::Failed {
                    name: STARTTLS.into(),
                    reason: "SERVFAIL".into(),
                },
            );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target(DOMAIN, 5269, false)]);
    }

    #[tokio::test]
    async fn one_failed_lookup_keeps_the_other_records() {
        let resolver = StaticResolver::new()
            .fail(DIRECT, DnsError::Timeout(DIRECT.into()))
            .srv(
                STARTTLS,
                vec![SrvRecord::new(0, 0, 5269, "xmpp.example.org")],
            );
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t, vec![target("xmpp.example.org", 5269, false)]);
    }

    #[tokio::test]
    async fn bogus_srv_aborts() {
        // RFC 7673 §3.1: a bogus answer: no fallback.
        let resolver = StaticResolver::new()
            .fail(STARTTLS, DnsError::Bogus(STARTTLS.into()))
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 5223, "tls.example.org")]);
        assert!(matches!(
            targets(&resolver, DOMAIN).await,
            Err(DnsError::Bogus(_))
        ));
    }

    #[tokio::test]
    async fn ip_literal_domain_needs_no_srv() {
        let resolver = StaticResolver::new();
        let t = targets(&resolver, "[::1]").await.expect("targets");
        assert_eq!(t, vec![target("::1", 5269, false)]);
        let t = targets(&resolver, "192.0.2.7").await.expect("targets");
        assert_eq!(t, vec![target("192.0.2.7", 5269, false)]);
        assert!(resolver.queries().is_empty());
    }

    #[tokio::test]
    async fn srv_lookups_run_concurrently() {
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 5223, "a.example.org")])
            .srv(STARTTLS, vec![SrvRecord::new(0, 0, 5269, "b.example.org")])
            .delay(DIRECT, Duration::from_millis(300))
            .delay(STARTTLS, Duration::from_millis(300));
        let start = Instant::now();
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert_eq!(t.len(), 2);
        assert!(
            start.elapsed() < Duration::from_millis(550),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn hanging_lookup_is_cancellable() {
        let resolver = StaticResolver::new().hang(DIRECT);
        let r = tokio::time::timeout(Duration::from_millis(100), targets(&resolver, DOMAIN)).await;
        assert!(r.is_err(), "the caller's timeout ends a hung lookup");
    }

    #[tokio::test]
    async fn secure_flag_follows_the_answer() {
        let resolver = StaticResolver::new()
            .srv(DIRECT, vec![SrvRecord::new(0, 0, 5223, "a.example.org")])
            .srv(STARTTLS, vec![SrvRecord::new(1, 0, 5269, "b.example.org")])
            .secure(true)
            .secure_name(STARTTLS, false);
        let t = targets(&resolver, DOMAIN).await.expect("targets");
        assert!(t[0].secure && t[0].direct_tls);
        assert!(!t[1].secure);
    }

    #[test]
    fn families_interleaved_v6_first() {
        let v4a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let v4b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let v4c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        let v6a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let v6b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        assert_eq!(
            interleave(&[v4a, v4b, v6a, v4c, v6b, v4a]),
            vec![v6a, v4a, v6b, v4b, v4c]
        );
        assert_eq!(interleave(&[v4a, v4b]), vec![v4a, v4b]);
    }

    /// A port on 127.0.0.1 that refuses connections (bound, then closed).
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        port
    }

    #[tokio::test]
    async fn ip_literal_target_needs_no_lookup() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let resolver = StaticResolver::new();
        let (_stream, addr) = connect(
            &resolver,
            &target("127.0.0.1", port, false),
            DEFAULT_ATTEMPT_DELAY,
        )
        .await
        .expect("connect");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(resolver.queries().is_empty());
    }

    #[tokio::test]
    async fn refused_address_falls_through_at_once() {
        // Two loopback addresses for one host: the first refuses, the second listens. The
        // refusal starts the second attempt without waiting for the (long) attempt delay.
        let listener = TcpListener::bind("127.0.0.2:0").await;
        let Ok(listener) = listener else {
            // 127.0.0.2 isn't routable everywhere (e.g. some BSDs); nothing to test then.
            return;
        };
        let port = listener.local_addr().expect("addr").port();
        // A target has one port: 127.0.0.1 refuses it (nothing listens there; binding and
        // closing checks that it's free), 127.0.0.2 accepts.
        drop(
            TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("free on 127.0.0.1"),
        );
        let resolver = StaticResolver::new().ips(
            "xmpp.example.org",
            vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ],
        );
        let start = Instant::now();
        let (_stream, addr) = connect(
            &resolver,
            &target("xmpp.example.org", port, false),
            Duration::from_secs(5),
        )
        .await
        .expect("connect");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 2], port)));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn all_refused_is_an_error() {
        let port = closed_port().await;
        let resolver = StaticResolver::new().ips(
            "xmpp.example.org",
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        );
        let e = connect(
            &resolver,
            &target("xmpp.example.org", port, false),
            DEFAULT_ATTEMPT_DELAY,
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }

    /// A listener on `addr` whose accept queue is full: Linux drops further SYNs, so a
    /// connection attempt to it hangs (a loopback blackhole; remote "blackhole" addresses are
    /// not reliable, as sandboxes may answer for them). `None` where that doesn't hold.
    async fn blackhole(addr: SocketAddr) -> Option<(TcpListener, TcpStream)> {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(addr).ok()?;
        // A backlog of 0: the queue holds one connection, never accepted.
        let listener = socket.listen(0).ok()?;
        let filler = TcpStream::connect(addr).await.ok()?;
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        if probe.is_ok() {
            return None;
        }
        Some((listener, filler))
    }

    #[tokio::test]
    async fn slow_address_loses_to_the_next_after_the_delay() {
        // The first address hangs; the second starts after the attempt delay and wins, well
        // before the first would time out.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let Some(_hole) = blackhole(SocketAddr::from(([127, 0, 0, 2], port))).await else {
            return;
        };
        let resolver = StaticResolver::new().ips(
            "xmpp.example.org",
            vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
        );
        let delay = Duration::from_millis(150);
        let start = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(3),
            connect(&resolver, &target("xmpp.example.org", port, false), delay),
        )
        .await
        .expect("within the timeout");
        let (_stream, addr) = result.expect("connect");
        let elapsed = start.elapsed();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));
        // RFC 8305 §5: the second attempt waited for the delay, and no longer than needed.
        assert!(elapsed >= delay, "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }

    #[tokio::test]
    async fn dns_errors_become_io_errors() {
        let resolver = StaticResolver::new()
            .fail(
                "slow.example.org",
                DnsError::Timeout("slow.example.org".into()),
            )
            .srv("noaddr.example.org", vec![]);
        let e = connect(
            &resolver,
            &target("missing.example.org", 5269, false),
            DEFAULT_ATTEMPT_DELAY,
        )
        .await
        .expect_err("nxdomain");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<DnsError>());
        assert_eq!(
            inner,
            Some(&DnsError::NxDomain("missing.example.org".into()))
        );

        let e = connect(
            &resolver,
            &target("noaddr.example.org", 5269, false),
            DEFAULT_ATTEMPT_DELAY,
        )
        .await
        .expect_err("no records");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);

        let e = connect(
            &resolver,
            &target("slow.example.org", 5269, false),
            DEFAULT_ATTEMPT_DELAY,
        )
        .await
        .expect_err("timeout");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn connect_any_tries_targets_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refused = closed_port().await;
        let resolver = StaticResolver::new()
            .ips("dead.example.org", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .ips("live.example.org", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let list = vec![
            target("missing.example.org", 5269, true),
            target("dead.example.org", refused, false),
            target("live.example.org", port, false),
        ];
        let (_stream, addr, won) = connect_any(
            &resolver,
            &list,
            DEFAULT_ATTEMPT_DELAY,
            Duration::from_secs(2),
        )
        .await
        .expect("connect");
        assert_eq!(addr.port(), port);
        assert_eq!(won, list[2]);

        let e = connect_any(
            &resolver,
            &list[..2],
            DEFAULT_ATTEMPT_DELAY,
            Duration::from_secs(2),
        )
        .await
        .expect_err("none reachable");
        assert!(e.to_string().contains("missing.example.org"), "{e}");

        // A hung lookup is bounded by the per-target timeout.
        let resolver = StaticResolver::new().hang("hung.example.org");
        let start = Instant::now();
        let e = connect_any(
            &resolver,
            &[target("hung.example.org", 5269, false)],
            DEFAULT_ATTEMPT_DELAY,
            Duration::from_millis(100),
        )
        .await
        .expect_err("timeout");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn tlsa_only_when_both_answers_are_secure() {
        let record = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        };
        let secure_target = Target {
            secure: true,
            ..target("xmpp.example.org", 5269, false)
        };
        let resolver = StaticResolver::new()
            .tlsa("_5269._tcp.xmpp.example.org", vec![record.clone()])
            .secure(true);
        assert_eq!(
            tlsa_for(&resolver, &secure_target).await,
            Some(vec![record.clone()])
        );
        assert_eq!(resolver.queries(), vec!["TLSA _5269._tcp.xmpp.example.org"]);

        // An insecure SRV answer: no lookup, no DANE.
        assert_eq!(
            tlsa_for(&resolver, &target("xmpp.example.org", 5269, false)).await,
            None
        );
        assert_eq!(resolver.queries().len(), 1);

        // An insecure TLSA answer.
        let resolver = StaticResolver::new()
            .tlsa("_5269._tcp.xmpp.example.org", vec![record])
            .secure(false);
        assert_eq!(tlsa_for(&resolver, &secure_target).await, None);

        // No TLSA records.
        let resolver = StaticResolver::new().secure(true);
        assert_eq!(tlsa_for(&resolver, &secure_target).await, None);
    }

    #[test]
    fn server_entries() {
        assert_eq!(
            parse_server("192.0.2.53"),
            Some(SocketAddr::from(([192, 0, 2, 53], 53)))
        );
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some(SocketAddr::from(([127, 0, 0, 1], 5353)))
        );
        assert_eq!(
            parse_server("[::1]:5353"),
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5353))
        );
        assert_eq!(
            parse_server("::1"),
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53))
        );
        assert_eq!(parse_server("dns.example.org"), None);
        let bad = DnsConfig {
            servers: vec!["nope".into()],
            ..DnsConfig::default()
        };
        assert!(HickoryResolver::new(&bad).is_err());
    }

    #[test]
    fn hickory_resolver_construction_starts_nothing() {
        // Outside any tokio runtime: construction must neither need one nor spawn anything.
        let resolver = HickoryResolver::new(&DnsConfig {
            servers: vec!["127.0.0.1:5353".into()],
            dane: true,
        })
        .expect("new");
        assert!(resolver.inner.get().is_none());
    }

    mod hickory {
        //! [`HickoryResolver`] against a tiny in-test UDP DNS server.
        use super::*;
        use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
        use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
        use hickory_resolver::proto::rr::{Name, Record};
        use std::str::FromStr;
        use tokio::net::UdpSocket;

        fn name(s: &str) -> Name {
            Name::from_str(s).expect("name")
        }

        /// Answers: SRV for `_xmpp-server._tcp.example.org`, A and AAAA for
        /// `xmpp.example.org`, NXDOMAIN for `*.missing.example.org` and the rest, silence for
        /// `silent.example.org`.
        fn respond(query: &Message) -> Option<Message> {
            let q = query.queries.first()?;
            let qname = q.name().to_ascii().to_ascii_lowercase();
            let mut response = Message::response(query.metadata.id, OpCode::Query);
            response.metadata.recursion_available = true;
            response.add_query(q.clone());
            let rdata = match (qname.as_str(), q.query_type()) {
                ("silent.example.org.", _) => return None,
                ("_xmpp-server._tcp.example.org.", RecordType::SRV) => vec![
                    RData::SRV(SRV::new(10, 5, 5269, name("xmpp.example.org."))),
                    RData::SRV(SRV::new(5, 0, 5270, name("backup.example.org."))),
                ],
                ("xmpp.example.org.", RecordType::A) => {
                    vec![RData::A(A(Ipv4Addr::new(192, 0, 2, 10)))]
                }
                ("xmpp.example.org.", RecordType::AAAA) => {
                    vec![RData::AAAA(AAAA(Ipv6Addr::new(
                        0x2001, 0xdb8, 0, 0, 0, 0, 0, 10,
                    )))]
                }
                ("v4only.example.org.", RecordType::A) => {
                    vec![RData::A(A(Ipv4Addr::new(192, 0, 2, 11)))]
                }
                ("v4only.example.org.", _) => vec![],
                _ => {
                    response.metadata.response_code = ResponseCode::NXDomain;
                    vec![]
                }
            };
            for r in rdata {
                response.add_answer(Record::from_rdata(q.name().clone(), 60, r));
            }
            Some(response)
        }

        async fn dns_server() -> SocketAddr {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = socket.local_addr().expect("addr");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let Some(bytes) = buf.get(..n) else { continue };
                    let Ok(query) = Message::from_vec(bytes) else {
                        continue;
                    };
                    let Some(response) = respond(&query) else {
                        continue;
                    };
                    if let Ok(out) = response.to_vec() {
                        let _ = socket.send_to(&out, peer).await;
                    }
                }
            });
            addr
        }

        async fn resolver() -> HickoryResolver {
            let server = dns_server().await;
            HickoryResolver::new(&DnsConfig {
                servers: vec![server.to_string()],
                ..DnsConfig::default()
            })
            .expect("resolver")
            .with_timeouts(Duration::from_millis(300), Duration::from_secs(2))
        }

        #[tokio::test]
        async fn srv_and_addresses() {
            let r = resolver().await;
            let mut srv = r.srv(STARTTLS).await.expect("srv");
            srv.records.sort_by_key(|s| s.priority);
            assert!(!srv.secure);
            assert_eq!(
                srv.records,
                vec![
                    SrvRecord::new(5, 0, 5270, "backup.example.org"),
                    SrvRecord::new(10, 5, 5269, "xmpp.example.org"),
                ]
            );
            let ips = r.ips("xmpp.example.org").await.expect("ips");
            assert_eq!(ips.records.len(), 2);
            assert!(
                ips.records
                    .contains(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)))
            );
            let ips = r.ips("v4only.example.org").await.expect("ips");
            assert_eq!(ips.records, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11))]);

            // The whole pipeline: SRV, XEP-0368 merge (no _xmpps-server: NXDOMAIN).
            let t = targets(&r, DOMAIN).await.expect("targets");
            assert_eq!(hosts(&t), vec!["backup.example.org", "xmpp.example.org"]);
        }

        #[tokio::test]
        async fn nxdomain_and_fallback() {
            let r = resolver().await;
            let e = r.ips("host.missing.example.org").await.expect_err("nx");
            assert_eq!(e, DnsError::NxDomain("host.missing.example.org".into()));
            let t = targets(&r, "missing.example.org").await.expect("targets");
            assert_eq!(t, vec![target("missing.example.org", 5269, false)]);
        }

        #[tokio::test]
        async fn silence_is_a_timeout() {
            let r = resolver().await;
            let start = Instant::now();
            let e = tokio::time::timeout(Duration::from_secs(10), r.srv("silent.example.org"))
                .await
                .expect("bounded by the resolver's own timeouts")
                .expect_err("silence");
            assert!(
                e.is_timeout() || matches!(e, DnsError::Failed { .. }),
                "{e:?}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{:?}",
                start.elapsed()
            );
        }
    }
}

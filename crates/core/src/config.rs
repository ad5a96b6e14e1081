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
    /// Software version module (XEP-0092).
    pub version: VersionConfig,
    /// Rosters (RFC 6121 §2).
    pub roster: RosterConfig,
    /// Offline messages (XEP-0160).
    pub offline: OfflineConfig,
    /// Message delivery rules (RFC 6121 §8.5).
    pub delivery: DeliveryConfig,
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
}

impl Default for RosterConfig {
    fn default() -> Self {
        RosterConfig { max_items: 5000 }
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
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `"sqlite"` or `"memory"`.
    pub backend: String,
    /// SQLite file; relative paths are under `data_dir`.
    pub path: PathBuf,
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

/// `[version]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionConfig {
    /// Whether to reveal the operating system in XEP-0092 answers.
    pub show_os: bool,
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
            ],
            admin_socket: PathBuf::from("admin.sock"),
            c2s: C2sConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            certificates: BTreeMap::new(),
            version: VersionConfig::default(),
            roster: RosterConfig::default(),
            offline: OfflineConfig::default(),
            delivery: DeliveryConfig::default(),
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
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sqlite".into(),
            path: PathBuf::from("canto.sqlite"),
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
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        c.normalize()?;
        Ok(c)
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
            other => {
                return Err(ConfigError::Invalid(format!(
                    "`storage.backend` = {other:?}: expected \"sqlite\" or \"memory\""
                )));
            }
        }
        for addr in self.c2s.listen.iter().chain(&self.c2s.direct_tls_listen) {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "listen address {addr:?} is not IP:PORT"
                )));
            }
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
        Ok(())
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

    /// The full example configuration, generated from the defaults and [`DOCS`].
    pub fn example() -> String {
        let mut out = String::from(
            "# Canto example configuration, generated by `canto config example`.\n\
             # Every key is optional; the values shown are the defaults.\n\n",
        );
        let value = toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Integer(0));
        let Some(table) = value.as_table() else {
            return out;
        };
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
            for (key, v) in t {
                push_doc(&mut out, &format!("{section}.{key}"));
                out.push_str(&format!("{key} = {v}\n"));
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

fn push_doc(out: &mut String, key: &str) {
    if let Some((_, doc)) = DOCS.iter().find(|(k, _)| *k == key) {
        for line in doc.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
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
        "Modules enabled on every host: disco, ping, version, time, roster.",
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
    ("storage", "Where accounts and user data are kept."),
    (
        "storage.backend",
        "\"sqlite\" (default, a file under data_dir) or \"memory\" (tests).",
    ),
    (
        "storage.path",
        "SQLite file, relative to data_dir unless absolute.",
    ),
    ("log", "Logging (to standard error)."),
    (
        "log.level",
        "error, warn, info, debug, trace, or a tracing filter such as \"canto=debug\".",
    ),
    ("limits", "Authentication limits."),
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
    ("certificates", "Certificate and key per host, PEM files."),
    ("version", "Software version (XEP-0092)."),
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
    ("offline", "Offline messages (XEP-0160)."),
    (
        "offline.max_messages",
        "Messages kept per account while it is offline; beyond, the sender gets\nservice-unavailable.",
    ),
    (
        "version.show_os",
        "Reveal the operating system in version answers.",
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
        let e = Config::parse("bogus = 1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bogus"), "{e}");
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
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("hosts = []", "hosts"),
            ("hosts = [\"a b\"]", "not a valid domain"),
            ("[storage]\nbackend = \"mysql\"", "storage.backend"),
            ("[c2s]\nlisten = [\"nowhere\"]", "IP:PORT"),
            ("[c2s]\nmax_stanza_size = 5", "max_stanza_size"),
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
                for kk in t.keys() {
                    let full = format!("{k}.{kk}");
                    assert!(DOCS.iter().any(|(d, _)| *d == full), "{full} undocumented");
                }
            }
        }
    }
}

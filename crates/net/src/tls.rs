//! TLS: one certificate per virtual host chosen by SNI, self-signed certificates generated on
//! first run, reload on SIGHUP, and channel-binding data for SCRAM-PLUS.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use canto_core::Config;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

/// A certificate problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused it.
    #[error("certificate for {host}: {message}")]
    Key {
        /// The host.
        host: String,
        /// What rustls said.
        message: String,
    },
    /// Generating a self-signed certificate failed.
    #[error("generating a certificate for {host}: {message}")]
    Generate {
        /// The host.
        host: String,
        /// What went wrong.
        message: String,
    },
}

/// One host's certificate with the hash used for `tls-server-end-point` (RFC 5929 §4.1).
struct HostCert {
    key: Arc<CertifiedKey>,
    end_point_hash: Vec<u8>,
}

/// Certificates by host. Replaced whole on reload.
struct CertSet {
    by_host: HashMap<String, HostCert>,
    default_host: String,
}

/// The certificate store; implements SNI selection for rustls.
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.set.load();
        f.debug_struct("CertStore")
            .field("hosts", &set.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The crypto provider: the process default if one is installed, else aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Where a host's certificate and key are: configured, or generated under `data_dir/certs/`.
pub fn cert_paths(config: &Config, host: &str) -> (PathBuf, PathBuf, bool) {
    match config.certificates.get(host) {
        Some(c) => (c.certificate.clone(), c.key.clone(), false),
        None => {
            let dir = config.data_dir.join("certs");
            (
                dir.join(format!("{host}.crt")),
                dir.join(format!("{host}.key")),
                true,
            )
        }
    }
}

/// Writes a self-signed certificate for `host` (with `*.host` too) if the files do not exist.
pub fn ensure_self_signed(host: &str, cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let gen_err = |message: String| TlsError::Generate {
        host: host.to_string(),
        message,
    };
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string(), format!("*.{host}")])
        .map_err(|e| gen_err(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| gen_err(e.to_string()))?;
    }
    std::fs::write(cert, ck.cert.pem()).map_err(|e| gen_err(e.to_string()))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| gen_err(e.to_string()))?;
    Ok(true)
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

fn load_host(host: &str, cert: &Path, key: &Path) -> Result<HostCert, TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(file_err(cert, "no certificate in file".into()));
    };
    // RFC 5929 §4.1: SHA-256 of the certificate (for SHA-1/MD5/SHA-256 signatures; our
    // generated certificates are ECDSA P-256 with SHA-256).
    let end_point_hash = sha2::Sha256::digest(leaf.as_ref()).to_vec();
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let ck = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Key {
        host: host.to_string(),
        message: e.to_string(),
    })?;
    Ok(HostCert {
        key: Arc::new(ck),
        end_point_hash,
    })
}

fn load_set(config: &Config) -> Result<CertSet, TlsError> {
    let mut by_host = HashMap::new();
    for host in &config.hosts {
        let (cert, key, generated) = cert_paths(config, host);
        if generated && ensure_self_signed(host, &cert, &key)? {
            tracing::warn!(host, path = %cert.display(), "generated a self-signed certificate");
        }
        by_host.insert(host.clone(), load_host(host, &cert, &key)?);
    }
    let default_host = config.hosts.first().cloned().unwrap_or_default();
    Ok(CertSet {
        by_host,
        default_host,
    })
}

impl CertStore {
    /// Loads every host's certificate, generating self-signed ones where none is configured.
    pub fn load(config: &Config) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            set: ArcSwap::from_pointee(load_set(config)?),
        }))
    }

    /// Self-signed certificates for `hosts` generated in memory, nothing read or written (for
    /// in-memory connections in fuzzing and tests).
    pub fn ephemeral(hosts: &[String]) -> Result<Arc<CertStore>, TlsError> {
        let mut by_host = HashMap::new();
        for host in hosts {
            let gen_err = |message: String| TlsError::Generate {
                host: host.clone(),
                message,
            };
            let ck = rcgen::generate_simple_self_signed(vec![host.clone()])
                .map_err(|e| gen_err(e.to_string()))?;
            let der = ck.cert.der().clone();
            let end_point_hash = sha2::Sha256::digest(der.as_ref()).to_vec();
            let key_der = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
                .map_err(|e| gen_err(e.to_string()))?;
            let key = CertifiedKey::from_der(vec![der], key_der, &provider())
                .map_err(|e| gen_err(e.to_string()))?;
            by_host.insert(
                host.clone(),
                HostCert {
                    key: Arc::new(key),
                    end_point_hash,
                },
            );
        }
        Ok(Arc::new(CertStore {
            set: ArcSwap::from_pointee(CertSet {
                by_host,
                default_host: hosts.first().cloned().unwrap_or_default(),
            }),
        }))
    }

    /// Checks every host's certificate without generating anything (`canto check`): configured
    /// files must load; a generated one that does not exist yet is fine (serve creates it).
    pub fn check(config: &Config) -> Result<(), TlsError> {
        for host in &config.hosts {
            let (cert, key, generated) = cert_paths(config, host);
            if generated && !cert.exists() && !key.exists() {
                continue;
            }
            load_host(host, &cert, &key)?;
        }
        Ok(())
    }

    /// Reloads from disk (SIGHUP); on error the old certificates stay.
    pub fn reload(&self, config: &Config) -> Result<(), TlsError> {
        self.set.store(Arc::new(load_set(config)?));
        Ok(())
    }

    /// The rustls server configuration using this store.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| rustls::ServerConfig::builder())
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // XEP-0368: direct TLS clients announce "xmpp-client" by ALPN.
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
        cfg.send_tls13_tickets = 0;
        Arc::new(cfg)
    }

    /// The rustls configuration for the HTTPS listeners: the same certificates, ALPN
    /// `http/1.1` (a browser offering `h2` and `http/1.1` must not be refused).
    pub fn http_server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = (*self.server_config()).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// `tls-server-end-point` data for the certificate served to `sni`.
    pub fn end_point_hash(&self, sni: Option<&str>) -> Option<Vec<u8>> {
        let set = self.set.load();
        let host = sni
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| set.default_host.clone());
        set.by_host
            .get(&host)
            .or_else(|| set.by_host.get(&set.default_host))
            .map(|h| h.end_point_hash.clone())
    }
}

impl CertSet {
    /// The certificate for `name`: its own, or its parent host's (a subdomain is covered by
    /// `*.host`).
    fn lookup(&self, name: &str) -> Option<&HostCert> {
        let n = name.to_ascii_lowercase();
        self.by_host.get(&n).or_else(|| {
            n.split_once('.')
                .and_then(|(_, parent)| self.by_host.get(parent))
        })
    }
}

impl CertStore {
    /// The certificate and key served for `host` (or its parent host), without falling back to
    /// the default host: what s2s presents as a TLS client certificate for a local domain.
    pub fn certified_key(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.set.load().lookup(host).map(|h| h.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        hello
            .server_name()
            .and_then(|n| set.lookup(n))
            .or_else(|| set.by_host.get(&set.default_host))
            .map(|h| h.key.clone())
    }
}

/// The channel-binding data of an established TLS connection (RFC 9266 `tls-exporter`, RFC
/// 5929 `tls-server-end-point`).
pub fn bindings(
    certs: &CertStore,
    conn: &rustls::ServerConnection,
) -> canto_proto::sasl::ChannelBindings {
    // RFC 9266: tls-exporter is defined for TLS 1.3 (and 1.2 with EMS, which we skip).
    let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
            .map(|k| k.to_vec())
    } else {
        None
    };
    canto_proto::sasl::ChannelBindings {
        tls_exporter: exporter,
        tls_server_end_point: certs.end_point_hash(conn.server_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("canto-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generates_once_and_loads_per_host() {
        let dir = temp_dir("gen");
        let config = Config {
            data_dir: dir.clone(),
            hosts: vec!["a.test".into(), "b.test".into()],
            ..Config::default()
        };
        let store = CertStore::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let a = store.end_point_hash(Some("a.test"));
        let b = store.end_point_hash(Some("B.TEST"));
        assert!(a.is_some() && b.is_some() && a != b);
        let before = std::fs::read(dir.join("certs/a.test.crt")).unwrap_or_default();
        let _again = CertStore::load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read(dir.join("certs/a.test.crt")).unwrap_or_default(),
            before
        );
        assert!(CertStore::check(&config).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = temp_dir("bad");
        let _ = std::fs::create_dir_all(&dir);
        let cert = dir.join("x.crt");
        let key = dir.join("x.key");
        let _ = std::fs::write(&cert, "not pem");
        let _ = std::fs::write(&key, "not pem");
        let mut config = Config {
            data_dir: dir.clone(),
            hosts: vec!["x.test".into()],
            ..Config::default()
        };
        config.certificates.insert(
            "x.test".into(),
            canto_core::config::CertificateConfig {
                certificate: cert,
                key,
            },
        );
        let msg = CertStore::check(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("x.crt"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

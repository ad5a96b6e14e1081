//! `canto check dns`: what other servers find for each host served — the SRV records
//! (`_xmpp-server`, `_xmpps-server`, RFC 6120 §3.2.1, XEP-0368), the addresses of each target —
//! and whether the host's certificate names it (RFC 6120 §13.7.1.2), which SASL EXTERNAL and
//! `secure_auth` peers need.

use std::fmt::Write as _;

use canto_core::Config;
use canto_net::s2s::dns::{self, Resolver};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Checks every host; appends a report to `out`. Returns whether everything was found.
pub async fn check(config: &Config, resolver: &dyn Resolver, out: &mut String) -> bool {
    let mut ok = true;
    for host in &config.hosts {
        let _ = writeln!(out, "{host}:");
        let srv_found = has_srv(resolver, host).await;
        match dns::targets(resolver, host).await {
            Ok(targets) => {
                if !srv_found {
                    let _ = writeln!(
                        out,
                        "  no _xmpp-server/_xmpps-server SRV records: peers connect to {host}:{} (RFC 6120 §3.2.1 fallback)",
                        dns::DEFAULT_PORT
                    );
                }
                for t in &targets {
                    let kind = if t.direct_tls {
                        "direct TLS"
                    } else {
                        "STARTTLS"
                    };
                    match resolver.ips(&t.host).await {
                        Ok(a) if !a.records.is_empty() => {
                            let list: Vec<String> =
                                a.records.iter().map(ToString::to_string).collect();
                            let _ = writeln!(
                                out,
                                "  {}:{} ({kind}) -> {}",
                                t.host,
                                t.port,
                                list.join(", ")
                            );
                        }
                        Ok(_) | Err(_) => {
                            ok = false;
                            let _ = writeln!(
                                out,
                                "  {}:{} ({kind}) -> PROBLEM: no address",
                                t.host, t.port
                            );
                        }
                    }
                }
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  PROBLEM: other servers cannot find {host}: {e}");
            }
        }
        let (cert, _, generated) = canto_net::tls::cert_paths(config, host);
        match CertificateDer::pem_file_iter(&cert)
            .ok()
            .and_then(|mut it| it.next())
            .and_then(Result::ok)
        {
            Some(ee) if canto_net::s2s::verify::name_matches(&ee, host) => {
                let note = if generated {
                    " (self-signed: peers with secure_auth refuse it; they can use dialback only if they allow it)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  certificate {} names {host}{note}", cert.display());
                if generated {
                    ok = false;
                }
            }
            Some(_) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "  PROBLEM: certificate {} does not name {host} (SRV-ID, XmppAddr or DNS-ID)",
                    cert.display()
                );
            }
            None => {
                ok = false;
                let _ = writeln!(out, "  PROBLEM: no certificate at {}", cert.display());
            }
        }
    }
    ok
}

async fn has_srv(resolver: &dyn Resolver, host: &str) -> bool {
    for service in [dns::SERVICE_STARTTLS, dns::SERVICE_DIRECT_TLS] {
        if resolver
            .srv(&format!("{service}.{host}"))
            .await
            .is_ok_and(|a| !a.records.is_empty())
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use canto_net::s2s::dns::{SrvRecord, StaticResolver};

    use super::*;

    fn config_with_cert(host: &str, names: &[&str]) -> (Config, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("canto-checkdns-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        let mut config = Config {
            hosts: vec![host.into()],
            data_dir: dir.clone(),
            ..Config::default()
        };
        config.certificates.insert(
            host.into(),
            canto_core::config::CertificateConfig {
                certificate: c,
                key: k,
            },
        );
        (config, dir)
    }

    #[tokio::test]
    async fn reports_records_addresses_and_certificate_names() {
        let (config, dir) = config_with_cert("example.org", &["example.org"]);
        let r = StaticResolver::new()
            .srv(
                "_xmpp-server._tcp.example.org",
                vec![SrvRecord::new(0, 5, 5269, "xmpp.example.org")],
            )
            .ips(
                "xmpp.example.org",
                vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
            );
        let mut out = String::new();
        assert!(check(&config, &r, &mut out).await, "{out}");
        assert!(
            out.contains("xmpp.example.org:5269 (STARTTLS) -> 192.0.2.7"),
            "{out}"
        );
        assert!(out.contains("names example.org"), "{out}");

        // A target without an address, and a certificate for another name: both reported.
        let (config2, dir2) = config_with_cert("example.org", &["other.example"]);
        let r = StaticResolver::new().srv(
            "_xmpp-server._tcp.example.org",
            vec![SrvRecord::new(0, 5, 5269, "gone.example.org")],
        );
        let mut out = String::new();
        assert!(!check(&config2, &r, &mut out).await);
        assert!(
            out.contains("gone.example.org:5269 (STARTTLS) -> PROBLEM"),
            "{out}"
        );
        assert!(out.contains("does not name example.org"), "{out}");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir2);
    }

    #[tokio::test]
    async fn no_srv_records_means_the_fallback() {
        let (config, dir) = config_with_cert("example.org", &["example.org"]);
        let r = StaticResolver::new().ips("example.org", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let mut out = String::new();
        assert!(check(&config, &r, &mut out).await, "{out}");
        assert!(out.contains("fallback"), "{out}");
        assert!(
            out.contains("example.org:5269 (STARTTLS) -> 127.0.0.1"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! `canto user …`: account administration, safe while the server runs (SQLite's busy timeout
//! makes the CLI and the server wait for each other; PostgreSQL serves both at once).

use std::io::BufRead;

use anyhow::{Context, Result, anyhow, bail};
use canto_core::Config;
use canto_proto::sasl::Credentials;
use canto_storage::Storage;

/// Splits and normalizes `user@host`; the host must be served.
pub fn parse_account(config: &Config, jid: &str) -> Result<(String, String)> {
    let parsed = canto_stanza::parse_jid(jid).map_err(|_| anyhow!("{jid:?} is not a valid JID"))?;
    let node = parsed
        .node()
        .ok_or_else(|| anyhow!("{jid:?} has no user part (expected user@host)"))?;
    if parsed.resource().is_some() {
        bail!("{jid:?} has a resource; give a bare JID user@host");
    }
    let host = parsed.domain().as_str().to_string();
    if !config.serves(&host) {
        bail!(
            "{host} is not one of the configured hosts ({})",
            config.hosts.join(", ")
        );
    }
    Ok((host, node.as_str().to_string()))
}

/// Opens persistent storage for a command.
pub async fn open(config: &Config) -> Result<Storage> {
    if config.storage.backend == "memory" {
        bail!(
            "the memory backend keeps nothing between runs; user commands need storage.backend = \"sqlite\" or \"postgresql\""
        );
    }
    Storage::open(&crate::startup::backend(config))
        .await
        .context("opening storage")
}

/// Reads a password from standard input (first line, without the newline).
pub fn password_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

/// `user add`
pub async fn add(config: &Config, jid: &str, password: &str) -> Result<()> {
    let (host, user) = parse_account(config, jid)?;
    let storage = open(config).await?;
    let creds = Credentials::from_password(password, config.limits.scram_iterations);
    storage
        .accounts
        .create(&host, &user, &creds)
        .await
        .map_err(|e| match e {
            canto_storage::StorageError::AlreadyExists => anyhow!("{user}@{host} already exists"),
            other => anyhow!(other),
        })?;
    Ok(())
}

/// `user passwd`
pub async fn passwd(config: &Config, jid: &str, password: &str) -> Result<()> {
    let (host, user) = parse_account(config, jid)?;
    let storage = open(config).await?;
    let creds = Credentials::from_password(password, config.limits.scram_iterations);
    if !storage
        .accounts
        .set_credentials(&host, &user, &creds)
        .await?
    {
        bail!("{user}@{host} does not exist");
    }
    Ok(())
}

/// `user del`: through the running server's admin socket when it is up (so its sessions are
/// closed and online contacts get roster pushes), else directly on storage with the same
/// `Server::delete_account`.
pub async fn del(config: &Config, jid: &str) -> Result<()> {
    let (host, user) = parse_account(config, jid)?;
    let bare = format!("{user}@{host}");
    if let Some(path) = config.admin_socket_path()
        && let Some(answer) = canto_net::admin::request(&path, &format!("user-del {bare}")).await
    {
        let answer = answer.context("talking to the running server")?;
        return match answer.strip_prefix("error: ") {
            None => Ok(()),
            Some(e) => bail!("{e}"),
        };
    }
    let storage = open(config).await?;
    // No modules and no listeners: just the account and roster logic.
    let quiet = Config {
        modules: Vec::new(),
        ..config.clone()
    };
    let server = canto_core::Server::new(quiet, storage, &[]).map_err(|e| anyhow!(e))?;
    let b = canto_stanza::BareJid::new(&bare).map_err(|e| anyhow!("{e}"))?;
    if !server.delete_account(&b).await? {
        bail!("{bare} does not exist");
    }
    Ok(())
}

/// `user list`
pub async fn list(config: &Config, host: &str) -> Result<Vec<String>> {
    let host = canto_stanza::jid::normalize_domain(host)
        .ok_or_else(|| anyhow!("{host:?} is not a domain"))?;
    if !config.serves(&host) {
        bail!("{host} is not one of the configured hosts");
    }
    let storage = open(config).await?;
    Ok(storage.accounts.list(&host).await?)
}

/// Parses `JID PASSWORD` lines (the password is the rest of the line). Blank lines and lines
/// starting with `#` are skipped; a bad line is an error naming its number.
pub fn parse_import(config: &Config, text: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (jid, pw) = line
            .trim_start()
            .split_once(char::is_whitespace)
            .ok_or_else(|| anyhow!("line {}: expected `JID PASSWORD`", i + 1))?;
        let pw = pw.trim_start();
        if pw.is_empty() {
            bail!("line {}: empty password", i + 1);
        }
        let (host, user) = parse_account(config, jid).with_context(|| format!("line {}", i + 1))?;
        out.push((host, user, pw.to_string()));
    }
    Ok(out)
}

/// `user import`: derives keys on every core, then writes in large transactions.
pub async fn import(config: &Config, text: &str) -> Result<usize> {
    let entries = parse_import(config, text)?;
    let storage = open(config).await?;
    let iterations = config.limits.scram_iterations;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut total = 0;
    for batch in entries.chunks(10_000) {
        let per = batch.len().div_ceil(threads).max(1);
        let derived: Vec<(String, String, Credentials)> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(h, u, p)| {
                                (
                                    h.clone(),
                                    u.clone(),
                                    Credentials::from_password(p, iterations),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if derived.len() != batch.len() {
            bail!("key derivation failed for part of the batch");
        }
        total += storage.accounts.import(&derived).await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            hosts: vec!["example.test".into()],
            ..Config::default()
        }
    }

    #[test]
    fn import_lines_are_parsed_and_errors_name_the_line() {
        let c = config();
        let ok = parse_import(
            &c,
            "# comment\nAlice@Example.test pass word\n\nbob@example.test x\n",
        );
        let ok = ok.unwrap_or_default();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok[0],
            ("example.test".into(), "alice".into(), "pass word".into())
        );
        let e = parse_import(&c, "a@example.test x\nnopassword\n")
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("line 2"));
        let e = parse_import(&c, "a@other.test x\n")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(e.unwrap_or_default().contains("other.test"));
    }

    #[test]
    fn accounts_must_be_bare_and_local() {
        let c = config();
        assert!(parse_account(&c, "a@example.test").is_ok());
        assert!(parse_account(&c, "example.test").is_err());
        assert!(parse_account(&c, "a@example.test/r").is_err());
        assert!(parse_account(&c, "a@elsewhere.test").is_err());
    }
}

//! The command line (clap): `canto` alone is `canto serve`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use canto_core::Config;
use clap::{Parser, Subcommand};

/// Canto, an XMPP server.
#[derive(Debug, Parser)]
#[command(name = "canto", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it the embedded defaults are used: host localhost,
    /// SQLite under ./canto-data, a generated self-signed certificate.
    #[arg(long, short, global = true, env = "CANTO_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server in the foreground.
    Serve,
    /// Manage accounts (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Cluster mode (`[cluster] nats_url`): `cluster status` lists the nodes and sessions.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Validate the configuration and certificates; `check dns`: what other servers find.
    Check {
        /// What to check besides the configuration.
        #[command(subcommand)]
        what: Option<CheckCommand>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Storage administration: moving data between backends.
    #[command(subcommand)]
    Storage(StorageCommand),
}

/// `canto storage …`
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy every store (accounts, key-value, maps, archives, pubsub) from the storage of one
    /// configuration to that of another: SQLite to PostgreSQL or back. Stop the server first.
    /// An interrupted copy continues where it stopped when run again.
    Copy {
        /// The configuration whose storage is read.
        #[arg(long)]
        from: PathBuf,
        /// The configuration whose storage is written (an empty database, or one an earlier
        /// run of this copy left behind).
        #[arg(long)]
        to: PathBuf,
        /// Copy nothing: compare the two row by row, report differences, and exit non-zero
        /// if there are any.
        #[arg(long)]
        verify: bool,
        /// Rows per batch (one transaction in the destination).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

/// `canto user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account. Without --password the password is read from standard input.
    Add {
        /// user@host
        jid: String,
        /// The password.
        #[arg(long)]
        password: Option<String>,
    },
    /// Change a password (read from standard input without --password).
    Passwd {
        /// user@host
        jid: String,
        /// The new password.
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and its data.
    Del {
        /// user@host
        jid: String,
    },
    /// List the accounts of a host.
    List {
        /// The host.
        host: String,
    },
    /// Create or replace accounts from lines of `JID PASSWORD` (standard input without FILE).
    Import {
        /// The file.
        file: Option<PathBuf>,
    },
}

/// `canto cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Ask every node of the cluster (over the configuration's NATS) for its sessions and
    /// print one line per node; `--sessions` also lists each node's full JIDs.
    Status {
        /// Also list every session's full JID under its node.
        #[arg(long)]
        sessions: bool,
        /// Milliseconds to wait for the nodes' answers.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
}

/// `canto check …`
#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// For each host: SRV records (`_xmpp-server`, `_xmpps-server`), their addresses, and
    /// whether the certificate names the host (for federation, docs/federation.md).
    Dns,
}

/// `canto config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the full example configuration with every key and its default.
    Example,
    /// Print the table of supported specifications (README), from the module registry.
    Specs,
}

/// `canto cluster status` output: a header, then one line per node (name, sessions, mirrors
/// of the others' sessions, the nodes it sees, uptime), each node's JIDs below it when asked.
pub fn cluster_status_text(nodes: &[canto_cluster::NodeStatus], sessions: bool) -> String {
    use std::fmt::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let mut out = String::new();
    let total: usize = nodes.iter().map(|n| n.sessions.len()).sum();
    let _ = writeln!(out, "{} nodes, {} sessions", nodes.len(), total);
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>8} {:>9}  peers",
        "node", "sessions", "mirrors", "uptime_s"
    );
    for n in nodes {
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8} {:>9}  {}",
            n.node,
            n.sessions.len(),
            n.mirrors,
            now.saturating_sub(n.started_ms) / 1000,
            n.peers.join(",")
        );
        if sessions {
            for j in &n.sessions {
                let _ = writeln!(out, "    {j}");
            }
        }
    }
    out
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => {
            let config = Config::load(p)?;
            // Every command refuses a file with an unknown key or a bad module section, as it
            // does an unknown core key (the core parses its own keys, modules theirs).
            canto_core::module::check_sections(&config, &canto_modules::all())
                .map_err(|e| anyhow::anyhow!("{}: invalid configuration: {e}", p.display()))?;
            Ok(config)
        }
        None => Ok(Config::default()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canto: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    match command {
        Command::Config(ConfigCommand::Example) => {
            print!(
                "{}",
                Config::example_with(&canto_modules::config_sections())
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Specs) => {
            print!("{}", specs_table());
            Ok(())
        }
        Command::Check { what: None } => {
            let config = load_config(cli.config.as_ref())?;
            check(&config)?;
            println!("configuration OK: hosts {}", config.hosts.join(", "));
            Ok(())
        }
        Command::Check {
            what: Some(CheckCommand::Dns),
        } => {
            let config = load_config(cli.config.as_ref())?;
            let resolver = canto_net::s2s::dns::HickoryResolver::new(&config.dns)
                .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
            let mut out = String::new();
            let ok = runtime()?.block_on(crate::checkdns::check(&config, &resolver, &mut out));
            print!("{out}");
            if !ok {
                anyhow::bail!("problems found for federation (see above)");
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::Status { sessions, wait_ms }) => {
            let config = load_config(cli.config.as_ref())?;
            if !config.cluster.enabled() {
                anyhow::bail!("not a cluster: `cluster.nats_url` is not set in the configuration");
            }
            let nodes = runtime()?.block_on(canto_cluster::status(
                &config.cluster,
                std::time::Duration::from_millis(wait_ms),
            ));
            let nodes = nodes.map_err(anyhow::Error::msg)?;
            print!("{}", cluster_status_text(&nodes, sessions));
            if nodes.is_empty() {
                anyhow::bail!("no node answered within {wait_ms} ms");
            }
            Ok(())
        }
        Command::Serve => {
            let config = load_config(cli.config.as_ref())?;
            let log = crate::logging::init(&config.log.level);
            runtime()?.block_on(crate::startup::serve(
                config,
                cli.config,
                log,
                crate::startup::Trace::default(),
            ))
        }
        Command::Storage(StorageCommand::Copy {
            from,
            to,
            verify,
            batch,
        }) => {
            let from = load_config(Some(&from))?;
            let to = load_config(Some(&to))?;
            let rt = runtime()?;
            let mut out = std::io::stdout();
            if verify {
                rt.block_on(crate::storage_cmd::verify(&from, &to, batch, &mut out))
            } else {
                rt.block_on(crate::storage_cmd::copy(&from, &to, batch, &mut out))
            }
        }
        Command::User(u) => {
            let config = load_config(cli.config.as_ref())?;
            let rt = runtime()?;
            match u {
                UserCommand::Add { jid, password } => {
                    let pw = match password {
                        Some(p) => p,
                        None => crate::users::password_from_stdin()?,
                    };
                    rt.block_on(crate::users::add(&config, &jid, &pw))?;
                    println!("created {jid}");
                }
                UserCommand::Passwd { jid, password } => {
                    let pw = match password {
                        Some(p) => p,
                        None => crate::users::password_from_stdin()?,
                    };
                    rt.block_on(crate::users::passwd(&config, &jid, &pw))?;
                    println!("password changed for {jid}");
                }
                UserCommand::Del { jid } => {
                    rt.block_on(crate::users::del(&config, &jid))?;
                    println!("deleted {jid}");
                }
                UserCommand::List { host } => {
                    for u in rt.block_on(crate::users::list(&config, &host))? {
                        println!("{u}@{host}");
                    }
                }
                UserCommand::Import { file } => {
                    let text = match file {
                        Some(f) => std::fs::read_to_string(&f)
                            .with_context(|| format!("reading {}", f.display()))?,
                        None => {
                            let mut s = String::new();
                            std::io::stdin()
                                .read_to_string(&mut s)
                                .context("reading standard input")?;
                            s
                        }
                    };
                    let started = std::time::Instant::now();
                    let n = rt.block_on(crate::users::import(&config, &text))?;
                    println!(
                        "imported {n} accounts in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(())
        }
    }
}

/// The README's table of specifications implemented by modules, generated from
/// `canto_modules::supported_specs()`; a test keeps README.md in step.
pub fn specs_table() -> String {
    let mut out = String::from("| specification | version | title | module |\n|---|---|---|---|\n");
    for (module, spec) in canto_modules::supported_specs() {
        out.push_str(&format!(
            "| {} | {} | {} | `{module}` |\n",
            spec.id, spec.version, spec.title
        ));
    }
    out
}

/// `canto check`: the configuration already parsed; certificates and storage path next.
pub fn check(config: &Config) -> Result<()> {
    // Module sections: an unknown top-level key, or a section its module refuses.
    canto_core::module::check_sections(config, &canto_modules::all())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    canto_net::CertStore::check(config).map_err(|e| {
        anyhow::anyhow!(
            "{e} (configured certificates must exist; generated ones are created by `canto serve`)"
        )
    })?;
    if config.storage.backend == "sqlite" {
        let p = config.sqlite_path();
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty())
            && dir.exists()
            && !dir.is_dir()
        {
            anyhow::bail!("{} is not a directory", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_lists_the_registry_specs() {
        // README.md embeds `canto config specs` between markers; regenerate it when modules
        // change.
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("<!-- specs:start -->\n")
            .map(|i| i + "<!-- specs:start -->\n".len());
        let end = readme.find("<!-- specs:end -->");
        let embedded = match (start, end) {
            (Some(s), Some(e)) if s <= e => &readme[s..e],
            _ => "",
        };
        assert_eq!(
            embedded,
            super::specs_table(),
            "README.md is out of date: run `canto config specs`"
        );
    }
}

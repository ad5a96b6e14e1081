//! `canto-bench`: simulated XMPP clients against any server (Canto, Prosody, ejabberd), with
//! the server's CPU time and resident memory read from `/proc/PID`.
#![forbid(unsafe_code)]

mod client;
mod fanout;
mod proc_stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use client::{Client, Mech, Security, Target};
use proc_stats::ProcStats;

/// Load tool for XMPP servers.
#[derive(Debug, Parser)]
#[command(name = "canto-bench", version, about)]
pub(crate) struct Cli {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:5222")]
    addr: SocketAddr,
    /// XMPP domain.
    #[arg(long, default_value = "localhost")]
    pub(crate) domain: String,
    /// Accounts are PREFIX1, PREFIX2, … (numbered from 1).
    #[arg(long, default_value = "user")]
    pub(crate) user_prefix: String,
    /// Password of every account.
    #[arg(long, default_value = "password")]
    pub(crate) password: String,
    /// Transport.
    #[arg(long, value_enum, default_value = "plain")]
    security: Security,
    /// SASL mechanism.
    #[arg(long, value_enum, default_value = "plain")]
    mech: Mech,
    /// PID of the server, for CPU and RSS figures.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Source addresses to spread connections over (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<std::net::IpAddr>,
    /// What to run.
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Hold N authenticated sessions and report the server's RSS per session.
    Idle {
        /// Sessions.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Concurrent logins while connecting.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Seconds to wait after connecting before measuring.
        #[arg(long, default_value_t = 2)]
        settle: u64,
    },
    /// One account (PREFIX1) with R online contacts (PREFIX2…) that subscribe to it; it changes
    /// presence: time until every contact has it, server CPU; then its roster fetch time.
    Fanout {
        /// Contacts.
        #[arg(long, default_value_t = 500)]
        contacts: usize,
        /// Presence changes to time.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// N logins with K concurrent clients: logins/s, latency, server CPU per login.
    Login {
        /// Logins.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
    },
}

fn target(cli: &Cli) -> Target {
    Target {
        addr: cli.addr,
        domain: cli.domain.clone(),
        security: cli.security,
        mech: cli.mech,
        sources: cli.sources.clone(),
        cache: Default::default(),
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Logs in accounts `from..to` with `concurrency` at a time; returns the clients and each
/// login's latency.
pub(crate) async fn login_range(
    cli: &Cli,
    t: &Arc<Target>,
    from: usize,
    to: usize,
    concurrency: usize,
) -> Result<(Vec<Client>, Vec<Duration>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..to {
        let t = t.clone();
        let sem = sem.clone();
        let user = format!("{}{}", cli.user_prefix, i + 1);
        let pw = cli.password.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let start = Instant::now();
            let c = Client::login(&t, i, &user, &pw, "bench")
                .await
                .with_context(|| format!("login {user}"))?;
            Ok::<_, anyhow::Error>((c, start.elapsed()))
        });
    }
    let mut clients = Vec::new();
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (c, d) = r??;
        clients.push(c);
        lat.push(d);
    }
    lat.sort();
    Ok((clients, lat))
}

async fn run(cli: Cli) -> Result<()> {
    let t = Arc::new(target(&cli));
    let own = ProcStats::read(std::process::id()).ok();
    match cli.workload {
        Workload::Idle {
            count,
            concurrency,
            settle,
        } => {
            let Some(pid) = cli.server_pid else {
                bail!("idle needs --server-pid")
            };
            let before = ProcStats::read(pid)?;
            let (clients, lat) = login_range(&cli, &t, 0, count, concurrency).await?;
            tokio::time::sleep(Duration::from_secs(settle)).await;
            let after = ProcStats::read(pid)?;
            let per = (after.rss_bytes as f64 - before.rss_bytes as f64) / clients.len() as f64;
            println!(
                "idle: sessions={} security={:?} mech={:?} server_rss_before={} KiB after={} KiB per_session={:.1} KiB login_p50={:?} p99={:?}",
                clients.len(),
                cli.security,
                cli.mech,
                before.rss_bytes / 1024,
                after.rss_bytes / 1024,
                per / 1024.0,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
            );
            drop(clients);
        }
        Workload::Fanout { contacts, rounds } => fanout::run(&cli, &t, contacts, rounds).await?,
        Workload::Login { count, concurrency } => {
            let before = cli.server_pid.map(ProcStats::read).transpose()?;
            let start = Instant::now();
            let mut done = 0;
            let mut lat_all = Vec::new();
            // Log in and drop in batches so the server's session count stays bounded.
            while done < count {
                let n = (count - done).min(concurrency * 10);
                let (clients, lat) = login_range(&cli, &t, done, done + n, concurrency).await?;
                drop(clients);
                lat_all.extend(lat);
                done += n;
            }
            let wall = start.elapsed();
            lat_all.sort();
            let cpu = match (before, cli.server_pid.map(ProcStats::read).transpose()?) {
                (Some(b), Some(a)) => {
                    format!("{:.0}", (a.cpu_secs - b.cpu_secs) * 1e6 / count as f64)
                }
                _ => "n/a".into(),
            };
            println!(
                "login: logins={count} concurrency={concurrency} mech={:?} rate={:.0}/s p50={:?} p99={:?} server_cpu_per_login_us={cpu}",
                cli.mech,
                count as f64 / wall.as_secs_f64(),
                percentile(&lat_all, 0.5),
                percentile(&lat_all, 0.99),
            );
        }
    }
    if let (Some(o), Ok(n)) = (own, ProcStats::read(std::process::id())) {
        println!(
            "load tool: cpu={:.2}s rss={} KiB",
            n.cpu_secs - o.cpu_secs,
            n.rss_bytes / 1024
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("canto-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canto-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

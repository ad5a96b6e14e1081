//! `canto-bench`: simulated XMPP clients against any server (Canto, Prosody, ejabberd), with
//! the server's CPU time and resident memory read from `/proc/PID`.
#![forbid(unsafe_code)]

mod client;
mod fanout;
mod mam;
mod msg;
mod muc;
mod pep;
mod proc_stats;
mod upload;
mod ws;

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
    /// Accounts are PREFIX<FIRST>, PREFIX<FIRST+1>, …
    #[arg(long, default_value = "user")]
    pub(crate) user_prefix: String,
    /// Number of the first account a workload uses, so that workloads run one after another
    /// on one server can use distinct accounts (fan-out leaves subscriptions behind).
    #[arg(long, default_value_t = 1)]
    pub(crate) first: usize,
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
        /// Seconds to wait before reading the baseline RSS (lets a freshly started server
        /// settle).
        #[arg(long, default_value_t = 0)]
        baseline_wait: u64,
    },
    /// One account (PREFIX<FIRST>) with R online contacts (the next R accounts) that subscribe
    /// to it; it changes presence: time until every contact has it, server CPU; then its
    /// roster fetch time. Run it on accounts without subscriptions (fresh ones).
    Fanout {
        /// Contacts.
        #[arg(long, default_value_t = 500)]
        contacts: usize,
        /// Presence changes to time.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// PEP (XEP-0163) fan-out: one account (PREFIX<FIRST>) with R contacts (the next R
    /// accounts) in mutual presence subscription, each online with XEP-0115 caps whose
    /// features include `urn:example:bench+notify` (it answers the server's disco#info
    /// queries); the account publishes K items to `urn:example:bench`, one after the other:
    /// time until the last contact has each notification, server CPU per publish. Run it on
    /// accounts without subscriptions (fresh ones).
    PepFanout {
        /// Contacts.
        #[arg(long, default_value_t = 500)]
        contacts: usize,
        /// Publishes timed (after warm-up publishes that every contact gets).
        #[arg(long, default_value_t = 20)]
        publishes: usize,
    },
    /// PEP publish rate: one account (PREFIX<FIRST>) publishes to one node of its own with a
    /// window of IQs in flight: results per second, their latency, server CPU per publish.
    PepPublish {
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds of publishing before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Publishes in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// `pubsub#max_items` of the node, set by publish-options on the first publish (a
        /// node left with another value by an earlier run refuses it: use another --node).
        #[arg(long, default_value_t = 1)]
        max_items: usize,
        /// The node.
        #[arg(long, default_value = pep::NODE)]
        node: String,
    },
    /// P pairs of accounts exchanging chat messages (each session sends to its partner's full
    /// JID): delivered msgs/s, latency p50/p99, server CPU per delivered message, the tool's
    /// own CPU. `--flood` or `--rate R`.
    Msg {
        /// Pairs of accounts (2 × P sessions).
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// As fast as the window allows.
        #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
        flood: bool,
        /// Messages in flight per sender in flood mode (a message is acknowledged when the
        /// partner receives it).
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Fixed total rate, messages per second over all senders.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of traffic before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Concurrent logins while connecting.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// XEP-0198: every session enables stream management after binding, answers the
        /// server's `<r/>` and asks for acks itself (see --sm-request-every).
        #[arg(long)]
        sm: bool,
        /// With --sm: each sender appends `<r/>` after every N messages (0: never asks).
        #[arg(long, default_value_t = 16, requires = "sm")]
        sm_request_every: usize,
        /// XEP-0352: every session announces this client state after its presence.
        #[arg(long, value_enum)]
        csi: Option<msg::Csi>,
        /// Federation or cluster: the partner of each pair logs in on this other server (its
        /// accounts are PREFIX<FIRST>… there too, or the next ones on another node of the same
        /// domain), so every message crosses server-to-server or node-to-node; the first
        /// message each way, which sets up the connection, is timed on its own.
        #[arg(long, requires = "peer_domain")]
        peer_addr: Option<SocketAddr>,
        /// The other server's XMPP domain (with --peer-addr). When it is --domain (another
        /// node of a cluster), the partners use the next PAIRS accounts
        /// (PREFIX<FIRST+PAIRS>…), so that no account is logged in on both.
        #[arg(long, requires = "peer_addr")]
        peer_domain: Option<String>,
        /// Also report the CPU of this process over the measured interval, as
        /// NAME_cpu_cores and NAME_cpu_us_per_msg (repeatable; e.g. `b=1234` for another
        /// cluster node, `nats=1235`).
        #[arg(long, value_name = "NAME=PID", value_parser = parse_watch)]
        watch_pid: Vec<(String, u32)>,
    },
    /// Fills one account's archive in Canto's SQLite file (or PostgreSQL database) with N
    /// messages (through canto_storage, as the server's `mam` module stores them), for the
    /// `mam` workload. Run it while the server is stopped (it works while it runs too, but
    /// competes for the lock).
    MamFill {
        /// Canto's data directory: the file is DIR/canto.sqlite (the default `storage.path`).
        #[arg(long, required_unless_present_any = ["db", "postgres"])]
        data_dir: Option<std::path::PathBuf>,
        /// Fill a PostgreSQL database instead (`storage.url` of a `backend = "postgresql"`
        /// configuration).
        #[arg(long, conflicts_with_all = ["db", "data_dir"])]
        postgres: Option<String>,
        /// The SQLite file itself (overrides --data-dir).
        #[arg(long)]
        db: Option<std::path::PathBuf>,
        /// Owner of the archive (bare JID, normalized).
        #[arg(long)]
        user: String,
        /// Messages.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
        /// Contacts (contact1@HOST …) the messages rotate over.
        #[arg(long, default_value_t = 4)]
        contacts: usize,
        /// Milliseconds between two messages' timestamps.
        #[arg(long, default_value_t = 10_000)]
        step_ms: i64,
        /// Timestamp of the first message, ms since the epoch (default: the last one is now).
        #[arg(long)]
        start_ms: Option<i64>,
        /// Messages per transaction.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
    },
    /// Times XEP-0313 queries against one account's (large) archive: pages from the middle
    /// (RSM after/before an id there, with a `with` filter, a start/end window, a start), the
    /// last page and the count alone; p50/p99/max per kind and server CPU per query.
    Mam {
        /// The account (bare JID); its password is --password.
        #[arg(long)]
        user: String,
        /// Queries per kind.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Page size (RSM max).
        #[arg(long, default_value_t = 50)]
        max: usize,
        /// Positions in the middle tenth of the archive the queries rotate over.
        #[arg(long, default_value_t = 20)]
        anchors: usize,
        /// Length of the start/end windows, seconds.
        #[arg(long, default_value_t = 3600)]
        window_s: i64,
        /// JID for the `with` kinds (default contact1@HOST, as mam-fill writes).
        #[arg(long)]
        with: Option<String>,
        /// Kinds to time, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "after,before,with,window,with-window,start,last,count"
        )]
        kinds: Vec<mam::Kind>,
    },
    /// MUC (XEP-0045) fan-out: accounts PREFIX<FIRST>… join one room of N occupants (the first
    /// creates it); it sends M groupchat messages one after the other: time until the last
    /// occupant (the sender included) has each, server CPU per message.
    MucFanout {
        /// Occupants, the sender included (one session each).
        #[arg(long, default_value_t = 1000)]
        occupants: usize,
        /// Messages timed.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Untimed messages first (every occupant must get each).
        #[arg(long, default_value_t = 2)]
        warmup_messages: usize,
        #[command(flatten)]
        muc: muc::MucOpts,
    },
    /// MUC chatter: S occupants of one room all send groupchat messages, each with a window of
    /// messages not yet received by every occupant (`--window`) or at a fixed total rate
    /// (`--rate`): messages fully broadcast per second, latency, server CPU per message.
    MucChatty {
        /// Occupants, every one a sender.
        #[arg(long, default_value_t = 50)]
        occupants: usize,
        /// Messages per sender in flight (sent, not yet received by every occupant).
        #[arg(long, default_value_t = 2)]
        window: usize,
        /// Fixed total rate, messages per second over all senders (instead of the window).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of traffic before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[command(flatten)]
        muc: muc::MucOpts,
    },
    /// MUC joins: ceil(J/K) accounts create rooms, then J more join them (C in flight, see
    /// --join-concurrency): joins per second (join presence sent → self-presence with status
    /// 110), latency, server CPU per join.
    MucJoin {
        /// Clients joining.
        #[arg(long, default_value_t = 500)]
        joins: usize,
        /// Joiners per room (0: one room for all).
        #[arg(long, default_value_t = 0)]
        room_size: usize,
        #[command(flatten)]
        muc: muc::MucOpts,
    },
    /// MUC memory: N sessions logged in, then each joins a room of K: the server's RSS per
    /// occupant (RSS joined − RSS logged in) / N, and per session.
    MucIdle {
        /// Occupants (one session each).
        #[arg(long, default_value_t = 2000)]
        occupants: usize,
        /// Occupants per room.
        #[arg(long, default_value_t = 100)]
        room_size: usize,
        /// Seconds of quiet before each RSS reading.
        #[arg(long, default_value_t = 2)]
        settle: u64,
        /// Seconds to wait before the first RSS reading (lets a fresh server settle).
        #[arg(long, default_value_t = 0)]
        baseline_wait: u64,
        #[command(flatten)]
        muc: muc::MucOpts,
    },
    /// XEP-0363: account PREFIX<FIRST> gets a slot from the upload service for a file of
    /// SIZE MiB, PUTs it (streamed) and GETs it back: MiB/s each way, the server's RSS before,
    /// at its peak during each transfer, and after. The slot's URLs must be plain http://.
    Upload {
        /// File size in MiB.
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
        /// The upload service.
        #[arg(long, default_value = "upload.localhost")]
        service: String,
    },
    /// N logins with K concurrent clients: logins/s, latency, server CPU per login.
    Login {
        /// Logins.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
        /// Cycle through this many accounts (0: one account per login). With SCRAM the
        /// client derives each account's salted password once and then uses its cache.
        #[arg(long, default_value_t = 0)]
        accounts: usize,
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

/// The `p` quantile (0–1) of sorted durations; zero if empty.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The `p` quantile (0–1) of sorted numbers; zero if empty.
pub(crate) fn percentile_u64(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, for `key=value` output.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `NAME=PID` for `msg --watch-pid`.
fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("PID {pid:?}: {e}"))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("NAME {name:?}: letters, digits and _ only"));
    }
    Ok((name.to_owned(), pid))
}

/// Logs in the accounts with indexes `from..to` (account number `FIRST + index`, or
/// `FIRST + index % wrap` when `wrap` > 0) with `concurrency` at a time, each with its own
/// resource; returns the clients (in completion order) and each login's latency, sorted.
pub(crate) async fn login_range(
    cli: &Cli,
    t: &Arc<Target>,
    from: usize,
    to: usize,
    concurrency: usize,
    wrap: usize,
) -> Result<(Vec<Client>, Vec<Duration>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..to {
        let t = t.clone();
        let sem = sem.clone();
        let n = if wrap > 0 { i % wrap } else { i };
        let user = format!("{}{}", cli.user_prefix, n + cli.first);
        let pw = cli.password.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let start = Instant::now();
            let c = Client::login(&t, i, &user, &pw, &format!("b{i}"))
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
            baseline_wait,
        } => {
            let Some(pid) = cli.server_pid else {
                bail!("idle needs --server-pid")
            };
            tokio::time::sleep(Duration::from_secs(baseline_wait)).await;
            let before = ProcStats::read(pid)?;
            let (clients, lat) = login_range(&cli, &t, 0, count, concurrency, 0).await?;
            tokio::time::sleep(Duration::from_secs(settle)).await;
            let after = ProcStats::read(pid)?;
            let per = (after.rss_bytes as f64 - before.rss_bytes as f64) / clients.len() as f64;
            println!(
                "idle: sessions={} security={:?} mech={:?} server_rss_before_kib={} server_rss_after_kib={} kib_per_session={:.1} login_p50_ms={} login_p99_ms={}",
                clients.len(),
                cli.security,
                cli.mech,
                before.rss_bytes / 1024,
                after.rss_bytes / 1024,
                per / 1024.0,
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
            );
            drop(clients);
        }
        Workload::Fanout { contacts, rounds } => fanout::run(&cli, &t, contacts, rounds).await?,
        Workload::PepFanout {
            contacts,
            publishes,
        } => pep::fanout(&cli, &t, contacts, publishes).await?,
        Workload::PepPublish {
            seconds,
            warmup,
            window,
            max_items,
            ref node,
        } => {
            pep::publish(
                &cli,
                &t,
                &pep::PublishOpts {
                    seconds,
                    warmup,
                    window,
                    max_items,
                    node: node.clone(),
                },
            )
            .await?
        }
        Workload::Msg {
            pairs,
            flood,
            window,
            rate,
            duration,
            warmup,
            concurrency,
            sm,
            sm_request_every,
            csi,
            peer_addr,
            ref peer_domain,
            ref watch_pid,
        } => {
            let pace = match (flood, rate) {
                (true, _) => msg::Pace::Flood { window },
                (false, Some(r)) => msg::Pace::Rate(r),
                (false, None) => bail!("msg needs --flood or --rate"),
            };
            msg::run(
                &cli,
                &t,
                msg::MsgOpts {
                    pairs,
                    pace,
                    warmup,
                    duration,
                    concurrency,
                    sm: sm.then_some(sm_request_every),
                    csi,
                    peer: match (peer_addr, peer_domain) {
                        (Some(addr), Some(domain)) => Some(Arc::new(Target {
                            addr,
                            domain: domain.clone(),
                            ..target(&cli)
                        })),
                        _ => None,
                    },
                    watch: watch_pid.clone(),
                },
            )
            .await?
        }
        Workload::MamFill {
            ref data_dir,
            ref db,
            ref postgres,
            ref user,
            count,
            contacts,
            step_ms,
            start_ms,
            batch,
        } => {
            let db = match (db, data_dir, postgres) {
                (Some(f), _, _) => f.clone(),
                (None, Some(d), _) => d.join("canto.sqlite"),
                (None, None, Some(_)) => std::path::PathBuf::new(),
                (None, None, None) => bail!("mam-fill needs --data-dir, --db or --postgres"),
            };
            mam::fill(mam::FillOpts {
                db,
                postgres: postgres.clone(),
                user: user.clone(),
                count,
                contacts,
                step_ms,
                start_ms,
                batch,
            })
            .await?
        }
        Workload::Mam {
            ref user,
            queries,
            max,
            anchors,
            window_s,
            ref with,
            ref kinds,
        } => {
            mam::run(
                &cli,
                &t,
                mam::QueryOpts {
                    user: user.clone(),
                    queries,
                    max,
                    anchors,
                    window_s,
                    with: with.clone(),
                    kinds: kinds.clone(),
                },
            )
            .await?
        }
        Workload::MucFanout {
            occupants,
            messages,
            warmup_messages,
            ref muc,
        } => {
            muc::fanout(
                &cli,
                &t,
                muc,
                &muc::FanoutOpts {
                    occupants,
                    messages,
                    warmup: warmup_messages,
                },
            )
            .await?
        }
        Workload::MucChatty {
            occupants,
            window,
            rate,
            duration,
            warmup,
            ref muc,
        } => {
            muc::chatty(
                &cli,
                &t,
                muc,
                &muc::ChattyOpts {
                    occupants,
                    window,
                    rate,
                    duration,
                    warmup,
                },
            )
            .await?
        }
        Workload::MucJoin {
            joins,
            room_size,
            ref muc,
        } => muc::join(&cli, &t, muc, &muc::JoinOpts { joins, room_size }).await?,
        Workload::MucIdle {
            occupants,
            room_size,
            settle,
            baseline_wait,
            ref muc,
        } => {
            muc::idle(
                &cli,
                &t,
                muc,
                &muc::IdleOpts {
                    occupants,
                    room_size,
                    settle,
                    baseline_wait,
                },
            )
            .await?
        }
        Workload::Upload { size_mib, service } => {
            let user = format!("{}{}", cli.user_prefix, cli.first);
            let o = upload::Options {
                size: size_mib * 1024 * 1024,
                service,
            };
            upload::run(&t, &user, &cli.password, cli.server_pid, &o).await?
        }
        Workload::Login {
            count,
            concurrency,
            accounts,
        } => {
            let before = cli.server_pid.map(ProcStats::read).transpose()?;
            let start = Instant::now();
            let mut done = 0;
            let mut lat_all = Vec::new();
            // Log in and drop in batches so the server's session count stays bounded.
            while done < count {
                let n = (count - done).min(concurrency * 10);
                let (clients, lat) =
                    login_range(&cli, &t, done, done + n, concurrency, accounts).await?;
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
                "login: logins={count} concurrency={concurrency} security={:?} mech={:?} logins_per_s={:.0} p50_ms={} p99_ms={} server_cpu_us_per_login={cpu}",
                cli.security,
                cli.mech,
                count as f64 / wall.as_secs_f64(),
                ms(percentile(&lat_all, 0.5)),
                ms(percentile(&lat_all, 0.99)),
            );
        }
    }
    if let (Some(o), Ok(n)) = (own, ProcStats::read(std::process::id())) {
        println!(
            "load tool: cpu_s={:.2} rss_kib={}",
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

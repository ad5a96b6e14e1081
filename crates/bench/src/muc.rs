//! The MUC workloads (XEP-0045, issue 12), against any server's MUC service
//! (`conference.DOMAIN` unless `--service` says otherwise):
//!
//! * `muc-fanout`: one room of N occupants; one of them sends M groupchat messages one after
//!   the other, each timed until the last occupant (the sender's reflection included) has it;
//! * `muc-chatty`: one room of S occupants that all send for a while, each with a window of
//!   messages not yet received by every occupant (or at a fixed total rate): messages fully
//!   broadcast per second;
//! * `muc-join`: J clients joining rooms that exist (created beforehand by other accounts),
//!   C joins in flight: joins per second (join presence sent → self-presence with status 110);
//! * `muc-idle`: N sessions, then the same sessions as occupants of rooms of K: the server's
//!   RSS per occupant.
//!
//! Every client logs in, sends its initial presence, and is split into a writer (kept here) and
//! a reader task that parses everything the server sends and reports what matters (its own
//! self-presence, the workload's messages by sender and number, errors, IQ answers, the end of
//! its stream) on one channel, stamped with the time the reader saw it. Each room is created
//! by its first occupant, who unlocks it with an empty configuration form (instant room,
//! XEP-0045 §10.1.2) when the self-presence says 201 (Prosody, Canto and ejabberd lock new
//! rooms until then). Joins ask for no history (`<history maxstanzas='0'/>`), so a room's
//! earlier traffic costs nothing at join time. Rooms are named PREFIX<n> with a random PREFIX
//! per run unless `--room-prefix` is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use canto_xml::Element;
use tokio::sync::{Semaphore, mpsc};

use crate::client::{ClientReader, ClientWriter, Target};
use crate::proc_stats::{ProcStats, ThreadCpu};
use crate::{Cli, login_range, ms, percentile};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// Text after the number in every message body, so that a message is the size of a short real
/// chat line rather than a bare number.
const PAD: &str = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.";

/// Longest wait for one step (a join, a message fully broadcast, an IQ answer).
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Logins in flight while connecting.
const LOGIN_CONCURRENCY: usize = 50;

/// Options every MUC workload shares.
#[derive(Clone, Debug, clap::Args)]
pub struct MucOpts {
    /// The MUC service (default conference.DOMAIN).
    #[arg(long)]
    pub service: Option<String>,
    /// Rooms are PREFIX0, PREFIX1, … (default: `b` and a random number, new for every run, so
    /// that runs against one server never meet each other's rooms).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Joins in flight while setting up rooms (muc-join: while measuring).
    #[arg(long, default_value_t = 10)]
    pub join_concurrency: usize,
    /// A field of the configuration form each new room is unlocked with, FIELD=VALUE
    /// (repeatable; e.g. `muc#roomconfig_enablearchiving=0`); none: an empty form (instant
    /// room with the service's defaults).
    #[arg(long = "room-config", value_name = "FIELD=VALUE")]
    pub room_config: Vec<String>,
}

/// The configuration form a creator unlocks its room with (XEP-0045 §10.1.2 with no fields,
/// §10.1.3 with some).
fn config_form(fields: &[String]) -> String {
    if fields.is_empty() {
        return "<x xmlns='jabber:x:data' type='submit'/>".into();
    }
    let mut x = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{NS_MUC}#roomconfig</value></field>"
    );
    for f in fields {
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        x.push_str(&format!(
            "<field var='{}'><value>{}</value></field>",
            canto_xml::escape(k),
            canto_xml::escape(v)
        ));
    }
    x.push_str("</x>");
    x
}

/// What a reader reports.
#[derive(Debug)]
enum Ev {
    /// Self-presence (status 110) of occupant `idx`; `created` when it also says 201.
    Joined {
        idx: usize,
        created: bool,
        at: Instant,
    },
    /// A presence error from a room to occupant `idx`.
    JoinError { idx: usize, text: String },
    /// A groupchat message of the workload (body `m<SENDER>.<SEQ> …`) reached an occupant.
    Msg {
        sender: usize,
        seq: u64,
        at: Instant,
    },
    /// A message of type error came back to `idx` (its id, the stanza).
    MsgError {
        idx: usize,
        id: Option<String>,
        text: String,
    },
    /// The answer to an IQ `idx` sent.
    Iq {
        idx: usize,
        id: String,
        ok: bool,
        text: String,
    },
    /// `idx`'s stream ended or failed.
    Closed { idx: usize, why: String },
}

/// The sender and number of a workload message, from its body.
fn parse_body(body: &str) -> Option<(usize, u64)> {
    let token = body.split_whitespace().next()?.strip_prefix('m')?;
    let (s, q) = token.split_once('.')?;
    Some((s.parse().ok()?, q.parse().ok()?))
}

fn child<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    e.children().find(|c| c.name() == name)
}

/// Status codes of a MUC presence.
fn status_codes(e: &Element) -> Vec<&str> {
    e.get_child("x", NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code"))
                .collect()
        })
        .unwrap_or_default()
}

/// The at most 300 first bytes of a stanza, for error messages.
fn short(e: &Element) -> String {
    let s = String::from_utf8_lossy(&e.to_bytes()).into_owned();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// What one reader saw, summed over all.
#[derive(Default)]
struct Counters {
    /// Stanzas received.
    stanzas: AtomicU64,
    /// IQ requests to a client (left unanswered).
    iq_requests: AtomicU64,
}

/// Classifies one stanza from the server (None: nothing to report).
fn classify(idx: usize, e: &Element, service: &str) -> Option<Ev> {
    let from_service = e
        .attr("from")
        .and_then(|f| f.split('/').next())
        .and_then(|b| b.split_once('@'))
        .is_some_and(|(_, d)| d == service);
    match e.name() {
        "presence" if from_service => {
            if e.attr("type") == Some("error") {
                return Some(Ev::JoinError {
                    idx,
                    text: short(e),
                });
            }
            let codes = status_codes(e);
            if codes.contains(&"110") && e.attr("type") != Some("unavailable") {
                return Some(Ev::Joined {
                    idx,
                    created: codes.contains(&"201"),
                    at: Instant::now(),
                });
            }
            None
        }
        "message" => {
            if e.attr("type") == Some("error") {
                return Some(Ev::MsgError {
                    idx,
                    id: e.attr("id").map(str::to_string),
                    text: short(e),
                });
            }
            let (sender, seq) = parse_body(&child(e, "body")?.text())?;
            Some(Ev::Msg {
                sender,
                seq,
                at: Instant::now(),
            })
        }
        "iq" if matches!(e.attr("type"), Some("result" | "error")) => Some(Ev::Iq {
            idx,
            id: e.attr("id").unwrap_or_default().to_string(),
            ok: e.attr("type") == Some("result"),
            text: short(e),
        }),
        // A stream error arrives as an element `error` in the streams namespace.
        "error" => Some(Ev::Closed {
            idx,
            why: format!("stream error: {}", short(e)),
        }),
        _ => None,
    }
}

/// Logged-in clients: their writers, and one channel with what their readers saw.
struct Crowd {
    writers: Vec<Option<ClientWriter>>,
    rx: mpsc::UnboundedReceiver<Ev>,
    counters: Arc<Counters>,
    _readers: tokio::task::JoinSet<()>,
    service: String,
    prefix: String,
    /// The form new rooms are unlocked with.
    form: String,
}

impl Crowd {
    /// Logs in accounts FIRST+from … FIRST+to-1, each sends its initial presence.
    async fn connect(
        cli: &Cli,
        t: &Arc<Target>,
        opts: &MucOpts,
        from: usize,
        to: usize,
    ) -> Result<Crowd> {
        let service = opts
            .service
            .clone()
            .unwrap_or_else(|| format!("conference.{}", cli.domain));
        let prefix = opts
            .room_prefix
            .clone()
            .unwrap_or_else(|| format!("b{:08x}-", rand::random::<u32>()));
        let (clients, _) = login_range(cli, t, from, to, LOGIN_CONCURRENCY, 0).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let mut readers = tokio::task::JoinSet::new();
        let mut writers = Vec::with_capacity(clients.len());
        for (idx, c) in clients.into_iter().enumerate() {
            let (r, mut w) = c.split();
            w.send(b"<presence/>").await?;
            writers.push(Some(w));
            readers.spawn(read_loop(
                idx,
                r,
                service.clone(),
                tx.clone(),
                counters.clone(),
            ));
        }
        Ok(Crowd {
            writers,
            rx,
            counters,
            _readers: readers,
            service,
            prefix,
            form: config_form(&opts.room_config),
        })
    }

    fn room(&self, n: usize) -> String {
        format!("{}{n}@{}", self.prefix, self.service)
    }

    async fn send(&mut self, idx: usize, data: &[u8]) -> Result<()> {
        let w = self
            .writers
            .get_mut(idx)
            .and_then(Option::as_mut)
            .ok_or_else(|| anyhow!("no writer for client {idx}"))?;
        w.send(data).await
    }

    /// The next event before `deadline` (None then); a client's end of stream is an error.
    async fn next(&mut self, deadline: Instant) -> Result<Option<Ev>> {
        match tokio::time::timeout_at(deadline.into(), self.rx.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => bail!("every reader ended"),
            Ok(Some(Ev::Closed { idx, why })) => bail!("client {idx} lost its stream: {why}"),
            Ok(Some(e)) => Ok(Some(e)),
        }
    }

    /// Sends the join presence of occupant `idx` (nick `n<idx>`) to room `room`.
    async fn send_join(&mut self, idx: usize, room: usize) -> Result<()> {
        let to = format!("{}/n{idx}", self.room(room));
        self.send(
            idx,
            format!(
                "<presence to='{to}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
            )
            .as_bytes(),
        )
        .await
    }

    /// Creates rooms: creator `idx` joins room `room` for each pair, then unlocks it with an
    /// empty configuration form when it was created locked (status 201).
    async fn create_rooms(&mut self, rooms: &[(usize, usize)]) -> Result<()> {
        for &(idx, room) in rooms {
            self.send_join(idx, room).await?;
            let deadline = Instant::now() + STEP_LIMIT;
            let created = loop {
                match self.next(deadline).await? {
                    None => bail!("room {}: no self-presence for its creator", self.room(room)),
                    Some(Ev::Joined {
                        idx: i, created, ..
                    }) if i == idx => break created,
                    Some(Ev::JoinError { idx: i, text }) if i == idx => {
                        bail!("creating room {}: {text}", self.room(room))
                    }
                    Some(_) => {}
                }
            };
            if created {
                let id = format!("unlock{room}");
                let iq = format!(
                    "<iq type='set' id='{id}' to='{}'><query xmlns='{NS_MUC_OWNER}'>{}</query></iq>",
                    self.room(room),
                    self.form
                );
                self.send(idx, iq.as_bytes()).await?;
                loop {
                    match self.next(deadline).await? {
                        None => bail!("room {}: no answer to the unlock", self.room(room)),
                        Some(Ev::Iq {
                            idx: i,
                            id: got,
                            ok,
                            text,
                        }) if i == idx && got == id => {
                            if !ok {
                                bail!("unlocking {}: {text}", self.room(room));
                            }
                            break;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Destroys rooms (XEP-0045 §10.9), each by its creator, and waits for the broadcasts to
    /// end: so that the sessions' ends do not make the server send every remaining occupant an
    /// unavailable presence per leaver (quadratic in a room's size) while the next workload
    /// runs. Best effort: failures are reported on stderr.
    async fn destroy_rooms(&mut self, rooms: &[(usize, usize)]) {
        let r: Result<()> = async {
            for &(idx, room) in rooms {
                let id = format!("destroy{room}");
                let iq = format!(
                    "<iq type='set' id='{id}' to='{}'><query xmlns='{NS_MUC_OWNER}'><destroy/></query></iq>",
                    self.room(room)
                );
                self.send(idx, iq.as_bytes()).await?;
                let deadline = Instant::now() + STEP_LIMIT;
                loop {
                    match self.next(deadline).await? {
                        None => bail!("no answer to the destruction of {}", self.room(room)),
                        Some(Ev::Iq {
                            idx: i,
                            id: got,
                            ok,
                            text,
                        }) if i == idx && got == id => {
                            if !ok {
                                bail!("destroying {}: {text}", self.room(room));
                            }
                            break;
                        }
                        Some(_) => {}
                    }
                }
            }
            self.settle(Duration::from_millis(300), STEP_LIMIT).await
        }
        .await;
        if let Err(e) = r {
            eprintln!("cleanup: {e:#}");
        }
    }

    /// Joins each (occupant, room) of `plan` with `concurrency` joins in flight; returns each
    /// join's latency (join presence sent → self-presence received), in plan order.
    async fn join_all(
        &mut self,
        plan: &[(usize, usize)],
        concurrency: usize,
    ) -> Result<Vec<Duration>> {
        let mut sent: HashMap<usize, (usize, Instant)> = HashMap::new();
        let mut lat = vec![Duration::ZERO; plan.len()];
        let (mut next, mut done) = (0, 0);
        while done < plan.len() {
            while next < plan.len() && sent.len() < concurrency.max(1) {
                let (idx, room) = plan[next];
                sent.insert(idx, (next, Instant::now()));
                self.send_join(idx, room).await?;
                next += 1;
            }
            let deadline = Instant::now() + STEP_LIMIT;
            match self.next(deadline).await? {
                None => bail!(
                    "{} joins without self-presence for {} s ({done} of {} joined)",
                    sent.len(),
                    STEP_LIMIT.as_secs(),
                    plan.len()
                ),
                Some(Ev::Joined { idx, at, .. }) => {
                    if let Some((k, t0)) = sent.remove(&idx) {
                        lat[k] = at - t0;
                        done += 1;
                    }
                }
                Some(Ev::JoinError { idx, text }) => {
                    bail!("join of client {idx} failed ({done} joined before): {text}")
                }
                Some(_) => {}
            }
        }
        Ok(lat)
    }

    /// Waits until no stanza arrived for `quiet` (at most `limit`): the broadcasts of the last
    /// steps are delivered. Events meanwhile are dropped; a lost stream is an error.
    async fn settle(&mut self, quiet: Duration, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        let mut last = self.counters.stanzas.load(Ordering::Relaxed);
        let mut still_since = Instant::now();
        while Instant::now() < end {
            let tick = Instant::now() + Duration::from_millis(50);
            while self.next(tick).await?.is_some() {}
            let now = self.counters.stanzas.load(Ordering::Relaxed);
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= quiet {
                return Ok(());
            }
        }
        Ok(())
    }
}

async fn read_loop(
    idx: usize,
    mut r: ClientReader,
    service: String,
    tx: mpsc::UnboundedSender<Ev>,
    counters: Arc<Counters>,
) {
    loop {
        match r.next().await {
            Ok(e) => {
                counters.stanzas.fetch_add(1, Ordering::Relaxed);
                if e.name() == "iq" && matches!(e.attr("type"), Some("get" | "set")) {
                    counters.iq_requests.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(ev) = classify(idx, &e, &service) {
                    let end = matches!(ev, Ev::Closed { .. });
                    if tx.send(ev).is_err() || end {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Ev::Closed {
                    idx,
                    why: format!("{e:#}"),
                });
                return;
            }
        }
    }
}

/// A groupchat message of the workload.
fn groupchat(room: &str, sender: usize, seq: u64) -> String {
    format!(
        "<message type='groupchat' to='{room}' id='m{sender}.{seq}'><body>m{sender}.{seq} {PAD}</body></message>"
    )
}

fn stats(cli: &Cli) -> Result<Option<ProcStats>> {
    cli.server_pid.map(ProcStats::read).transpose()
}

/// `utime+stime` delta per unit, in the unit given by `scale` (1e3: ms, 1e6: µs).
fn per(before: Option<ProcStats>, after: Option<ProcStats>, n: usize, scale: f64) -> String {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => {
            format!("{:.1}", (a.cpu_secs - b.cpu_secs) * scale / n as f64)
        }
        _ => "n/a".into(),
    }
}

fn kernel_share(before: Option<ProcStats>, after: Option<ProcStats>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.2}",
            (a.sys_secs - b.sys_secs) / (a.cpu_secs - b.cpu_secs).max(0.01)
        ),
        _ => "n/a".into(),
    }
}

/// Parameters of `muc-fanout`.
#[derive(Clone, Debug)]
pub struct FanoutOpts {
    /// Occupants (the sender among them).
    pub occupants: usize,
    /// Messages timed.
    pub messages: usize,
    /// Untimed messages first.
    pub warmup: usize,
}

/// `muc-fanout`: occupants 0…N-1 in one room (0 creates it and sends); M messages one after the
/// other, each timed until every occupant has it.
pub async fn fanout(cli: &Cli, t: &Arc<Target>, opts: &MucOpts, o: &FanoutOpts) -> Result<()> {
    let n = o.occupants.max(1);
    let setup_start = Instant::now();
    let mut crowd = Crowd::connect(cli, t, opts, 0, n).await?;
    let login_s = setup_start.elapsed().as_secs_f64();
    crowd.create_rooms(&[(0, 0)]).await?;
    let plan: Vec<(usize, usize)> = (1..n).map(|i| (i, 0)).collect();
    let join_start = Instant::now();
    let join_lat = crowd.join_all(&plan, opts.join_concurrency).await?;
    let join_s = join_start.elapsed().as_secs_f64();
    crowd.settle(Duration::from_millis(300), STEP_LIMIT).await?;
    let room = crowd.room(0);
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    let mut before = None;
    for seq in 0..(o.warmup + o.messages) as u64 {
        let timed = seq as usize >= o.warmup;
        if timed && before.is_none() {
            before = stats(cli)?;
        }
        let cpu0 = if timed {
            cli.server_pid.and_then(|p| ThreadCpu::read(p).ok())
        } else {
            None
        };
        let start = Instant::now();
        crowd.send(0, groupchat(&room, 0, seq).as_bytes()).await?;
        let (mut got, mut last) = (0usize, start);
        let deadline = start + STEP_LIMIT;
        while got < n {
            match crowd.next(deadline).await? {
                None => bail!(
                    "message {seq}: {} of {n} occupants without it after {} s",
                    n - got,
                    STEP_LIMIT.as_secs()
                ),
                Some(Ev::Msg {
                    sender: 0,
                    seq: s,
                    at,
                }) if s == seq => {
                    got += 1;
                    last = last.max(at);
                }
                Some(Ev::MsgError { text, .. }) => bail!("message {seq} bounced: {text}"),
                Some(_) => {}
            }
        }
        if timed {
            times.push(last - start);
            if let (Some(b), Some(a)) = (cpu0, cli.server_pid.and_then(|p| ThreadCpu::read(p).ok()))
            {
                cpus.push(a.since(&b));
            }
        }
    }
    let after = stats(cli)?;
    times.sort();
    cpus.sort();
    let mut jl = join_lat.clone();
    jl.sort();
    println!(
        "muc-fanout: occupants={n} messages={} login_s={login_s:.1} join_s={join_s:.1} join_p50_ms={} all_received_p50_ms={} all_received_p90_ms={} all_received_max_ms={} server_cpu_ms_per_msg={} server_cpu_ms_per_msg_schedstat_p50={} server_kernel_share={} iq_requests={}",
        o.messages,
        ms(percentile(&jl, 0.5)),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.9)),
        ms(times.last().copied().unwrap_or_default()),
        per(before, after, o.messages, 1e3),
        if cpus.len() == o.messages && !cpus.is_empty() {
            ms(percentile(&cpus, 0.5))
        } else {
            "n/a".into()
        },
        kernel_share(before, after),
        crowd.counters.iq_requests.load(Ordering::Relaxed),
    );
    crowd.destroy_rooms(&[(0, 0)]).await;
    Ok(())
}

/// Parameters of `muc-chatty`.
#[derive(Clone, Debug)]
pub struct ChattyOpts {
    /// Occupants, every one a sender.
    pub occupants: usize,
    /// Messages per sender not yet received by every occupant (flood mode).
    pub window: usize,
    /// Fixed total rate (messages per second over all senders) instead of flooding.
    pub rate: Option<f64>,
    /// Seconds measured.
    pub duration: f64,
    /// Seconds of traffic before measuring.
    pub warmup: f64,
}

/// Messages in flight per sender in rate mode (beyond it, the sender waits: the rate achieved
/// then falls short of the one asked for).
const RATE_WINDOW: usize = 64;

/// `muc-chatty`: S occupants in one room, all sending; a message is delivered when every
/// occupant (its sender included) has it; delivered messages per second over the measured
/// interval, their latency (sent → last occupant has it), server CPU per message.
pub async fn chatty(cli: &Cli, t: &Arc<Target>, opts: &MucOpts, o: &ChattyOpts) -> Result<()> {
    let n = o.occupants.max(1);
    let mut crowd = Crowd::connect(cli, t, opts, 0, n).await?;
    crowd.create_rooms(&[(0, 0)]).await?;
    let plan: Vec<(usize, usize)> = (1..n).map(|i| (i, 0)).collect();
    crowd.join_all(&plan, opts.join_concurrency).await?;
    crowd.settle(Duration::from_millis(300), STEP_LIMIT).await?;
    let room = crowd.room(0);
    let window = match o.rate {
        Some(_) => RATE_WINDOW,
        None => o.window.max(1),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent_at: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let mut slots = Vec::new();
    let mut senders = tokio::task::JoinSet::new();
    let start = Instant::now();
    for idx in 0..n {
        let sem = Arc::new(Semaphore::new(window));
        slots.push(sem.clone());
        let mut w = crowd.writers[idx]
            .take()
            .ok_or_else(|| anyhow!("no writer for {idx}"))?;
        let (stop, sent_at, room) = (stop.clone(), sent_at.clone(), room.clone());
        // Rate mode: every sender at rate/n, their phases spread over one period.
        let period = o
            .rate
            .map(|r| Duration::from_secs_f64(n as f64 / r.max(0.001)));
        senders.spawn(async move {
            let mut tick = period.map(|p| {
                let mut i =
                    tokio::time::interval_at((start + p.mul_f64(idx as f64 / n as f64)).into(), p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            let mut seq = 0u64;
            loop {
                if let Some(i) = tick.as_mut() {
                    i.tick().await;
                }
                sem.acquire().await?.forget();
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, anyhow::Error>((idx, w, seq));
                }
                if let Ok(mut m) = sent_at.lock() {
                    m.insert((idx, seq), Instant::now());
                }
                w.send(groupchat(&room, idx, seq).as_bytes()).await?;
                seq += 1;
            }
        });
    }
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(o.duration);
    let mut got: HashMap<(usize, u64), usize> = HashMap::new();
    let (mut delivered, mut rejected) = (0usize, 0usize);
    let mut first_error = None;
    let mut lat = Vec::new();
    let (mut cpu_from, mut delivered_from, mut t_from) = (None, 0, measure_from);
    let (cpu_to, t_to) = loop {
        let now = Instant::now();
        if cpu_from.is_none() && now >= measure_from {
            cpu_from = Some(stats(cli)?);
            delivered_from = delivered;
            t_from = now;
        }
        if now >= measure_to {
            break (stats(cli)?, now);
        }
        let wake = if cpu_from.is_none() {
            measure_from
        } else {
            measure_to
        };
        let Some(ev) = crowd.next(wake.min(now + STEP_LIMIT)).await? else {
            if Instant::now() < wake {
                bail!("no message delivered for {} s", STEP_LIMIT.as_secs());
            }
            continue;
        };
        match ev {
            Ev::Msg { sender, seq, at } => {
                let c = got.entry((sender, seq)).or_default();
                *c += 1;
                if *c == n {
                    got.remove(&(sender, seq));
                    delivered += 1;
                    let s = sent_at
                        .lock()
                        .ok()
                        .and_then(|mut m| m.remove(&(sender, seq)));
                    if cpu_from.is_some()
                        && let Some(s) = s
                    {
                        lat.push(at - s);
                    }
                    if let Some(sem) = slots.get(sender) {
                        sem.add_permits(1);
                    }
                }
            }
            Ev::MsgError { idx, id, text } => {
                rejected += 1;
                first_error.get_or_insert(text);
                let seq = id
                    .as_deref()
                    .and_then(|i| i.strip_prefix('m'))
                    .and_then(|i| i.split_once('.'))
                    .and_then(|(_, q)| q.parse::<u64>().ok());
                if let Some(q) = seq {
                    got.remove(&(idx, q));
                    if let Ok(mut m) = sent_at.lock() {
                        m.remove(&(idx, q));
                    }
                }
                if let Some(sem) = slots.get(idx) {
                    sem.add_permits(1);
                }
            }
            _ => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    for s in &slots {
        s.add_permits(1);
    }
    let mut sent = 0u64;
    while let Some(r) = senders.join_next().await {
        let (idx, w, seq) = r??;
        crowd.writers[idx] = Some(w);
        sent += seq;
    }
    let count = delivered - delivered_from;
    let wall = (t_to - t_from).as_secs_f64();
    // Let what is in flight arrive (so the next workload on this server starts quiet).
    let _ = crowd
        .settle(Duration::from_millis(300), Duration::from_secs(10))
        .await;
    lat.sort();
    let (b, a) = (cpu_from.flatten(), cpu_to);
    let cores = match (b, a) {
        (Some(b), Some(a)) => format!("{:.2}", (a.cpu_secs - b.cpu_secs) / wall),
        _ => "n/a".into(),
    };
    println!(
        "muc-chatty: occupants={n} mode={} window={window} seconds={wall:.1} sent={sent} delivered={count} delivered_per_s={:.0} deliveries_per_s={:.0} rejected={rejected} latency_p50_ms={} latency_p99_ms={} server_cpu_us_per_msg={} server_cpu_cores={cores} server_kernel_share={}",
        match o.rate {
            Some(r) => format!("rate:{r}"),
            None => "flood".into(),
        },
        count as f64 / wall,
        (count * n) as f64 / wall,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        per(b, a, count, 1e6),
        kernel_share(b, a),
    );
    if let Some(e) = first_error {
        eprintln!("muc-chatty: first bounced message: {e}");
    }
    crowd.destroy_rooms(&[(0, 0)]).await;
    Ok(())
}

/// Parameters of `muc-join`.
#[derive(Clone, Debug)]
pub struct JoinOpts {
    /// Clients joining (measured).
    pub joins: usize,
    /// Joiners per room (0: all in one room).
    pub room_size: usize,
}

/// `muc-join`: R = ceil(J / K) creators (accounts FIRST…) make the rooms, then J other clients
/// (the next accounts) join them, joiner j room j mod R, with `join_concurrency` joins in flight.
pub async fn join(cli: &Cli, t: &Arc<Target>, opts: &MucOpts, o: &JoinOpts) -> Result<()> {
    let j = o.joins.max(1);
    let k = if o.room_size == 0 { j } else { o.room_size };
    let rooms = j.div_ceil(k);
    let mut crowd = Crowd::connect(cli, t, opts, 0, rooms + j).await?;
    let creators: Vec<(usize, usize)> = (0..rooms).map(|r| (r, r)).collect();
    crowd.create_rooms(&creators).await?;
    crowd.settle(Duration::from_millis(300), STEP_LIMIT).await?;
    let plan: Vec<(usize, usize)> = (0..j).map(|i| (rooms + i, i % rooms)).collect();
    let before = stats(cli)?;
    let start = Instant::now();
    let mut lat = crowd.join_all(&plan, opts.join_concurrency).await?;
    let wall = start.elapsed().as_secs_f64();
    // The CPU window ends once the last broadcasts are out.
    crowd.settle(Duration::from_millis(250), STEP_LIMIT).await?;
    let after = stats(cli)?;
    lat.sort();
    println!(
        "muc-join: joins={j} rooms={rooms} occupants_per_room={} concurrency={} seconds={wall:.2} joins_per_s={:.0} join_p50_ms={} join_p99_ms={} server_cpu_us_per_join={} server_kernel_share={} stanzas_received={}",
        j.div_ceil(rooms) + 1,
        opts.join_concurrency,
        j as f64 / wall,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        per(before, after, j, 1e6),
        kernel_share(before, after),
        crowd.counters.stanzas.load(Ordering::Relaxed),
    );
    crowd.destroy_rooms(&creators).await;
    Ok(())
}

/// Parameters of `muc-idle`.
#[derive(Clone, Debug)]
pub struct IdleOpts {
    /// Occupants.
    pub occupants: usize,
    /// Occupants per room.
    pub room_size: usize,
    /// Seconds to wait before each RSS reading.
    pub settle: u64,
    /// Seconds to wait before the RSS reading before the logins.
    pub baseline_wait: u64,
}

/// `muc-idle`: N sessions logged in (RSS), then every one joins a room of K (the first of each
/// room creates it) (RSS again): KiB per occupant = the difference / N.
pub async fn idle(cli: &Cli, t: &Arc<Target>, opts: &MucOpts, o: &IdleOpts) -> Result<()> {
    let Some(pid) = cli.server_pid else {
        bail!("muc-idle needs --server-pid")
    };
    let n = o.occupants.max(1);
    let k = o.room_size.max(1);
    let rooms = n.div_ceil(k);
    tokio::time::sleep(Duration::from_secs(o.baseline_wait)).await;
    let empty = ProcStats::read(pid)?;
    let mut crowd = Crowd::connect(cli, t, opts, 0, n).await?;
    crowd
        .settle(Duration::from_secs(o.settle), STEP_LIMIT)
        .await?;
    let logged_in = ProcStats::read(pid)?;
    let creators: Vec<(usize, usize)> = (0..rooms).map(|r| (r * k, r)).collect();
    crowd.create_rooms(&creators).await?;
    let plan: Vec<(usize, usize)> = (0..n).filter(|i| i % k != 0).map(|i| (i, i / k)).collect();
    let start = Instant::now();
    crowd.join_all(&plan, opts.join_concurrency).await?;
    let join_s = start.elapsed().as_secs_f64();
    crowd
        .settle(Duration::from_secs(o.settle), STEP_LIMIT)
        .await?;
    let joined = ProcStats::read(pid)?;
    let kib = |a: &ProcStats, b: &ProcStats| (a.rss_bytes as f64 - b.rss_bytes as f64) / 1024.0;
    println!(
        "muc-idle: occupants={n} rooms={rooms} room_size={k} join_s={join_s:.1} server_rss_empty_kib={} server_rss_logged_in_kib={} server_rss_joined_kib={} kib_per_session={:.1} kib_per_occupant={:.1}",
        empty.rss_bytes / 1024,
        logged_in.rss_bytes / 1024,
        joined.rss_bytes / 1024,
        kib(&logged_in, &empty) / n as f64,
        kib(&joined, &logged_in) / n as f64,
    );
    crowd.destroy_rooms(&creators).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_forms() {
        assert_eq!(config_form(&[]), "<x xmlns='jabber:x:data' type='submit'/>");
        let f = config_form(&["muc#roomconfig_enablearchiving=0".into()]);
        assert!(
            f.contains("<field var='muc#roomconfig_enablearchiving'><value>0</value></field>"),
            "{f}"
        );
        assert!(f.contains("muc#roomconfig</value>"), "{f}");
    }

    #[test]
    fn body_round_trip() {
        let m = groupchat("r@c", 7, 42);
        assert!(m.contains("<body>m7.42 "), "{m}");
        assert_eq!(parse_body(&format!("m7.42 {PAD}")), Some((7, 42)));
        assert_eq!(parse_body("hello"), None);
        assert_eq!(parse_body("m7 x"), None);
    }

    #[test]
    fn classifies_self_presence_and_messages() {
        let p = Element::new("presence", "jabber:client")
            .with_attr("from", "room@conference.localhost/n1")
            .with_child(
                Element::new("x", NS_MUC_USER)
                    .with_child(Element::new("item", NS_MUC_USER).with_attr("role", "moderator"))
                    .with_child(Element::new("status", NS_MUC_USER).with_attr("code", "110"))
                    .with_child(Element::new("status", NS_MUC_USER).with_attr("code", "201")),
            );
        assert!(matches!(
            classify(3, &p, "conference.localhost"),
            Some(Ev::Joined {
                idx: 3,
                created: true,
                ..
            })
        ));
        // Another occupant's presence: nothing to report.
        let other = Element::new("presence", "jabber:client")
            .with_attr("from", "room@conference.localhost/n2")
            .with_child(Element::new("x", NS_MUC_USER));
        assert!(classify(3, &other, "conference.localhost").is_none());
        let m = Element::new("message", "jabber:client")
            .with_attr("type", "groupchat")
            .with_attr("from", "room@conference.localhost/n0")
            .with_child(Element::new("body", "jabber:client").with_text(format!("m0.5 {PAD}")));
        assert!(matches!(
            classify(1, &m, "conference.localhost"),
            Some(Ev::Msg {
                sender: 0,
                seq: 5,
                ..
            })
        ));
        let subject = Element::new("message", "jabber:client")
            .with_attr("type", "groupchat")
            .with_child(Element::new("subject", "jabber:client"));
        assert!(classify(1, &subject, "conference.localhost").is_none());
    }
}

//! The msg workload: P pairs of accounts exchange chat messages in both directions, either as
//! fast as a bounded window allows (`--flood --window W`) or at a fixed total rate
//! (`--rate R`), for a measured interval after a warm-up.
//!
//! Every client is split into a reader and a writer task, so reading never waits for writing.
//! Each message carries its send time (nanoseconds since the run's epoch, one clock in this
//! process) as its body; the partner's reader takes the arrival as the acknowledgement: it
//! records the latency and, in flood mode, gives the sender back a window slot.
//!
//! The readers do not run the XML parser: they scan the bytes for `<message …>…</message>`,
//! skip everything else (presence, IQs), count `type='error'` messages as errors and read the
//! number in `<body>`. That keeps the tool's own CPU per message far below a server's.
//!
//! With `--sm` every session enables XEP-0198 stream management after binding: its reader
//! counts the stanzas it receives (start tags of top-level `message`, `presence` and `iq`:
//! nothing in this workload nests them) and has its writer answer each `<r/>` with
//! `<a h/>`; the writer also asks the server for an ack every `--sm-request-every` messages.
//! With `--csi active|inactive` every session sends that XEP-0352 state after its initial
//! presence (messages with a body must still be delivered at once when inactive).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client::{ClientReader, ClientWriter};
use crate::proc_stats::ProcStats;
use crate::{Cli, login_range, percentile_u64};

/// How the senders are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as possible with at most this many messages per sender in flight.
    Flood {
        /// Messages in flight per sender.
        window: usize,
    },
    /// This many messages per second in total, spread evenly over the senders.
    Rate(f64),
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct MsgOpts {
    /// Pairs of accounts (2 × pairs sessions, each sending to its partner).
    pub pairs: usize,
    /// Pacing.
    pub pace: Pace,
    /// Seconds of traffic before the measurement starts.
    pub warmup: f64,
    /// Seconds measured.
    pub duration: f64,
    /// Concurrent logins while connecting.
    pub concurrency: usize,
    /// XEP-0198: enable stream management and ask for an ack every this many messages
    /// (`Some(0)`: enable, answer the server's requests, never ask).
    pub sm: Option<usize>,
    /// XEP-0352: the client state every session announces.
    pub csi: Option<Csi>,
    /// Federation or another cluster node: partners log in on this other server.
    pub peer: Option<Arc<crate::client::Target>>,
    /// Other processes whose CPU over the measured interval is reported (name, PID).
    pub watch: Vec<(String, u32)>,
}

/// XEP-0352 client states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Csi {
    /// `<active/>`.
    Active,
    /// `<inactive/>`: the server may hold what can wait, never messages with a body.
    Inactive,
}

/// What one reader saw.
#[derive(Default)]
struct RecvStats {
    /// Messages that arrived inside the measured interval.
    in_window: u64,
    /// Latencies (ns) of messages sent inside the measured interval.
    lat_ns: Vec<u64>,
    /// Bounced messages (`type='error'`) and messages without our body.
    errors: u64,
    /// XEP-0198: the server's `<r/>`s (each answered through the writer).
    sm_requests: u64,
    /// XEP-0198: the server's `<a/>`s, and the last `h` in them.
    sm_acks: u64,
    last_h: Option<u32>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if hay.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// What [`scan`] found.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A delivered message whose body starts with this send time.
    Delivered(u64),
    /// A bounce or a message that is not ours.
    Error,
    /// Another stanza (`presence`, `iq`): counts for XEP-0198.
    Stanza,
    /// XEP-0198 `<r/>`.
    AckRequest,
    /// XEP-0198 `<a h/>` (`None`: no usable `h`).
    Ack(Option<u32>),
    /// `<stream:error>`, with what follows its start tag (up to 300 bytes).
    StreamError(String),
}

/// The name of the start tag at `tag` (which starts with `<`), if the buffer holds all of it.
fn tag_name(tag: &[u8]) -> Option<&[u8]> {
    let rest = tag.get(1..)?;
    let n = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'/' | b'>'))?;
    Some(&rest[..n])
}

/// The value of attribute `name` in a start tag (`name='v'` or `name="v"`).
fn attr<'a>(open_tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(i) = find(open_tag.get(from..)?, name) {
        let at = from + i;
        let before = open_tag.get(at.wrapping_sub(1)).copied();
        let after = open_tag.get(at + name.len()..)?;
        if matches!(before, Some(b' ' | b'\t' | b'\n' | b'\r'))
            && let [b'=', q @ (b'\'' | b'"'), value @ ..] = after
            && let Some(end) = value.iter().position(|b| b == q)
        {
            return Some(&value[..end]);
        }
        from = at + 1;
    }
    None
}

/// Scans `buf` for complete top-level elements: each `<message>` (whole), the start tags of
/// `presence` and `iq` (whose content is skipped tag by tag) and XEP-0198 `<r/>` and `<a/>`;
/// calls `on` for each in stream order and returns how many bytes are consumed (the rest
/// may hold the start of an element split across reads).
fn scan(buf: &[u8], mut on: impl FnMut(Seen)) -> usize {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(lt) = rest.iter().position(|&b| b == b'<') else {
            return buf.len();
        };
        let tag = &rest[lt..];
        let Some(gt) = tag.iter().position(|&b| b == b'>') else {
            return pos + lt;
        };
        let open_tag = &tag[..=gt];
        // End tags (`</…>`) have an empty name here and are skipped like any other tag.
        let Some(name) = tag_name(open_tag) else {
            pos += lt + gt + 1;
            continue;
        };
        match name {
            b"message" => {
                if open_tag.ends_with(b"/>") {
                    on(Seen::Error);
                    pos += lt + gt + 1;
                    continue;
                }
                let Some(end) = find(tag, b"</message>") else {
                    return pos + lt;
                };
                if attr(open_tag, b"type") == Some(b"error") {
                    on(Seen::Error);
                } else {
                    on(body_ts(&tag[..end]).map_or(Seen::Error, Seen::Delivered));
                }
                pos += lt + end + b"</message>".len();
                continue;
            }
            b"presence" | b"iq" => on(Seen::Stanza),
            b"r" => on(Seen::AckRequest),
            b"stream:error" => {
                let after = &tag[gt + 1..];
                let text = &after[..after.len().min(300)];
                on(Seen::StreamError(
                    String::from_utf8_lossy(text).into_owned(),
                ));
            }
            b"a" => on(Seen::Ack(
                attr(open_tag, b"h")
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| h.parse().ok()),
            )),
            _ => {}
        }
        pos += lt + gt + 1;
    }
}

/// The send time at the start of the `<body>` of one message.
fn body_ts(msg: &[u8]) -> Option<u64> {
    let b = find(msg, b"<body")?;
    let after = &msg[b..];
    let gt = after.iter().position(|&c| c == b'>')?;
    let text = after.get(gt + 1..)?;
    let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&text[..digits]).ok()?.parse().ok()
}

fn ns_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The measured interval, in nanoseconds since the epoch.
#[derive(Clone, Copy)]
struct Window {
    from: u64,
    to: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        t >= self.from && t < self.to
    }
}

/// Reads until `stop` changes or the stream ends; acknowledges deliveries on `ack`; with
/// stream management, has the writer answer the server's `<r/>` through `sm` with the number
/// of stanzas received so far (XEP-0198 §4).
async fn reader(
    mut r: ClientReader,
    epoch: Instant,
    win: Window,
    ack: Option<Arc<Semaphore>>,
    received: Arc<AtomicU64>,
    sm: Option<mpsc::UnboundedSender<(u32, Instant)>>,
    mut stop: watch::Receiver<bool>,
) -> Result<RecvStats> {
    let mut st = RecvStats::default();
    // XEP-0198 §4: the `h` we report, modulo 2^32.
    let mut handled = 0u32;
    let mut stream_error = None;
    let mut last_r = None;
    let mut buf = Vec::with_capacity(32 * 1024);
    loop {
        let n = tokio::select! {
            r = r.read_raw(&mut buf) => r?,
            _ = stop.changed() => return Ok(st),
        };
        if n == 0 {
            if *stop.borrow() {
                return Ok(st);
            }
            bail!(
                "server closed the stream during the run: {} (stanzas received {handled}, <r/> seen {}, last {:?} ago)",
                stream_error.as_deref().unwrap_or("no stream error"),
                st.sm_requests,
                last_r.map(|t: Instant| t.elapsed()),
            );
        }
        let now = ns_since(epoch);
        let mut delivered = 0usize;
        let consumed = scan(&buf, |seen| match seen {
            Seen::Delivered(ts) => {
                handled = handled.wrapping_add(1);
                delivered += 1;
                if win.contains(now) {
                    st.in_window += 1;
                }
                if win.contains(ts) {
                    st.lat_ns.push(now.saturating_sub(ts));
                }
            }
            Seen::Error => {
                handled = handled.wrapping_add(1);
                st.errors += 1;
            }
            Seen::Stanza => handled = handled.wrapping_add(1),
            Seen::AckRequest => {
                st.sm_requests += 1;
                last_r = Some(Instant::now());
                if let Some(tx) = &sm {
                    // The writer may be gone after the run: then nobody answers.
                    let _ = tx.send((handled, Instant::now()));
                }
            }
            Seen::Ack(h) => {
                st.sm_acks += 1;
                st.last_h = h.or(st.last_h);
            }
            Seen::StreamError(e) => stream_error = Some(e),
        });
        buf.drain(..consumed);
        if buf.len() > 1 << 24 {
            bail!("more than 16 MiB without a complete message");
        }
        if delivered > 0 {
            received.fetch_add(delivered as u64, Ordering::Relaxed);
            if let Some(a) = &ack {
                a.add_permits(delivered);
            }
        }
    }
}

fn message(buf: &mut Vec<u8>, to: &str, seq: u64, ts: u64) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        buf,
        "<message to='{to}' type='chat' id='m{seq}'><body>{ts}</body></message>"
    );
}

/// What one sender does.
struct SendPlan {
    /// The partner's full JID.
    to: String,
    /// Zero of the timestamps.
    epoch: Instant,
    /// First send (flood) or first tick (paced).
    first: tokio::time::Instant,
    /// No sends from then on.
    end: tokio::time::Instant,
    /// Pacing.
    pace: Pace,
    /// This sender's window (flood).
    window: Arc<Semaphore>,
    /// Time between two sends of this sender (paced).
    period: Duration,
    /// XEP-0198: `h`s to acknowledge (from this session's reader).
    acks: Option<mpsc::UnboundedReceiver<(u32, Instant)>>,
    /// XEP-0198: ask for an ack every this many messages (0: never).
    request_every: u64,
}

/// The next `h` to acknowledge; never resolves without stream management. Several pending
/// requests are answered by one `<a/>` with the latest `h`.
async fn next_ack(
    acks: &mut Option<mpsc::UnboundedReceiver<(u32, Instant)>>,
) -> Option<(u32, Instant)> {
    match acks {
        Some(rx) => {
            let (mut h, since) = rx.recv().await?;
            while let Ok((later, _)) = rx.try_recv() {
                h = later;
            }
            Some((h, since))
        }
        None => std::future::pending().await,
    }
}

/// `<a h/>` (XEP-0198 §4).
fn sm_ack(h: u32) -> Vec<u8> {
    format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>").into_bytes()
}

/// Appends `<r/>` when message `seq` (counted from 0) completes a period of `every`.
fn maybe_request(buf: &mut Vec<u8>, every: u64, seq: u64) {
    if every > 0 && (seq + 1).is_multiple_of(every) {
        buf.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
    }
}

/// Sends until the plan's end; returns the half (kept open until the readers finish), the
/// number of messages sent and the longest time from a server's `<r/>` (seen by the reader)
/// to our `<a/>` written.
async fn writer(mut w: ClientWriter, p: SendPlan) -> Result<(ClientWriter, u64, Duration)> {
    let SendPlan {
        to,
        epoch,
        first,
        end,
        pace,
        window,
        period,
        mut acks,
        request_every,
    } = p;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut seq = 0u64;
    let mut ack_delay = Duration::ZERO;
    match pace {
        Pace::Flood { window: max } => loop {
            if seq == 0 {
                tokio::time::sleep_until(first).await;
            }
            let permit = tokio::select! {
                biased;
                Some((h, since)) = next_ack(&mut acks) => {
                    w.send(&sm_ack(h)).await?;
                    ack_delay = ack_delay.max(since.elapsed());
                    continue;
                }
                p = tokio::time::timeout_at(end, window.acquire()) => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            permit.map_err(|_| anyhow!("window closed"))?.forget();
            // Send everything the window allows in one write.
            let mut k = 1;
            let more = window.available_permits().min(max.saturating_sub(1));
            if more > 0
                && let Ok(p) = window.try_acquire_many(u32::try_from(more).unwrap_or(1))
            {
                p.forget();
                k += more;
            }
            buf.clear();
            let ts = ns_since(epoch);
            for _ in 0..k {
                message(&mut buf, &to, seq, ts);
                maybe_request(&mut buf, request_every, seq);
                seq += 1;
            }
            w.send(&buf).await?;
            if tokio::time::Instant::now() >= end {
                break;
            }
        },
        Pace::Rate(_) => {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let at = tokio::select! {
                    biased;
                    Some((h, since)) = next_ack(&mut acks) => {
                        w.send(&sm_ack(h)).await?;
                        ack_delay = ack_delay.max(since.elapsed());
                        continue;
                    }
                    at = tick.tick() => at,
                };
                if at >= end {
                    break;
                }
                buf.clear();
                message(&mut buf, &to, seq, ns_since(epoch));
                maybe_request(&mut buf, request_every, seq);
                seq += 1;
                w.send(&buf).await?;
            }
        }
    }
    Ok((w, seq, ack_delay))
}

/// Runs the workload and prints one line of figures.
/// Sends one message from `clients[from]` to `clients[to]` and waits for it: the time taken.
async fn one_message(
    clients: &mut [crate::client::Client],
    from: usize,
    to: usize,
) -> Result<Duration> {
    let jid = clients[to].jid.clone();
    let id = format!("setup-{}", rand::random::<u32>());
    let start = Instant::now();
    clients[from]
        .send(
            format!("<message to='{jid}' id='{id}' type='chat'><body>hello</body></message>")
                .as_bytes(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let el = tokio::time::timeout_at(deadline, clients[to].next())
            .await
            .map_err(|_| anyhow::anyhow!("the first message across did not arrive in 60 s"))??;
        if el.name() == "message" && el.attr("id") == Some(id.as_str()) {
            return Ok(start.elapsed());
        }
        if el.name() == "message" && el.attr("type") == Some("error") {
            bail!("the message bounced: {el}");
        }
    }
}

pub async fn run(cli: &Cli, t: &Arc<crate::client::Target>, o: MsgOpts) -> Result<()> {
    if o.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let n = 2 * o.pairs;
    let mut clients = match &o.peer {
        None => login_range(cli, t, 0, n, o.concurrency, 0).await?.0,
        Some(peer) => {
            // Partners (i ^ 1) on different servers: every message crosses federation, or
            // goes from one cluster node to another. Another node of the same domain shares
            // the accounts: its partners are the next `pairs` ones, so that no full JID is
            // bound on both nodes (a resource conflict) and no account is on both.
            let there_from = if peer.domain == t.domain { o.pairs } else { 0 };
            let (here, _) = login_range(cli, t, 0, o.pairs, o.concurrency, 0).await?;
            let (there, _) = login_range(
                cli,
                peer,
                there_from,
                there_from + o.pairs,
                o.concurrency,
                0,
            )
            .await?;
            here.into_iter()
                .zip(there)
                .flat_map(|(a, b)| [a, b])
                .collect()
        }
    };
    for c in &mut clients {
        if o.sm.is_some() {
            // XEP-0198 §3: after binding; the counters start at zero with <enabled/>.
            c.send(b"<enable xmlns='urn:xmpp:sm:3'/>").await?;
            let r = c.next().await?;
            if r.name() != "enabled" {
                bail!("stream management refused: {r}");
            }
        }
        c.send(b"<presence/>").await?;
        match o.csi {
            // XEP-0352 §3: nonzas, not counted by XEP-0198.
            Some(Csi::Active) => c.send(b"<active xmlns='urn:xmpp:csi:0'/>").await?,
            Some(Csi::Inactive) => c.send(b"<inactive xmlns='urn:xmpp:csi:0'/>").await?,
            None => {}
        }
    }
    // Let the presence echoes arrive before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(peer) = &o.peer
        && clients.len() >= 2
    {
        // The first message each way sets up the server-to-server connection (DNS, TCP, TLS,
        // authentication: SASL EXTERNAL or dialback); a second one is warm. Between cluster
        // nodes (same domain) there is nothing to set up: the same three figures, labelled so.
        let kind = if peer.domain == t.domain {
            "cross-node"
        } else {
            "s2s"
        };
        for (label, from, to) in [
            ("first message, connection set up on the way", 0, 1),
            ("first message back", 1, 0),
            ("second message (warm)", 0, 1),
        ] {
            let took = one_message(&mut clients, from, to).await?;
            println!("{kind} {label}: {:.1} ms", took.as_secs_f64() * 1000.0);
        }
    }
    let jids: Vec<String> = clients.iter().map(|c| c.jid.clone()).collect();
    let window_size = match o.pace {
        Pace::Flood { window } => window.max(1),
        Pace::Rate(_) => 1,
    };
    let windows: Vec<Arc<Semaphore>> = (0..n)
        .map(|_| Arc::new(Semaphore::new(window_size)))
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    let warmup = Duration::from_secs_f64(o.warmup.max(0.0));
    let duration = Duration::from_secs_f64(o.duration.max(0.1));
    let start = Instant::now() + Duration::from_millis(50);
    let epoch = start;
    let t_start = tokio::time::Instant::from_std(start);
    let win = Window {
        from: u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX),
        to: u64::try_from((warmup + duration).as_nanos()).unwrap_or(u64::MAX),
    };
    let end = t_start + warmup + duration;
    let period = match o.pace {
        Pace::Rate(r) if r > 0.0 => Duration::from_secs_f64(n as f64 / r),
        Pace::Rate(_) => bail!("--rate must be positive"),
        Pace::Flood { .. } => Duration::from_secs(1),
    };

    let mut readers = tokio::task::JoinSet::new();
    let mut writers = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let partner = i ^ 1;
        let (r, w) = c.split();
        let ack = matches!(o.pace, Pace::Flood { .. }).then(|| windows[partner].clone());
        let (sm_tx, sm_rx) = match o.sm {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        readers.spawn(reader(
            r,
            epoch,
            win,
            ack,
            received.clone(),
            sm_tx,
            stop_rx.clone(),
        ));
        // Stagger the paced senders evenly over one period.
        let first = match o.pace {
            Pace::Rate(_) => t_start + period.mul_f64(i as f64 / n as f64),
            Pace::Flood { .. } => t_start,
        };
        writers.spawn(writer(
            w,
            SendPlan {
                to: jids[partner].clone(),
                epoch,
                first,
                end,
                pace: o.pace,
                window: windows[i].clone(),
                period,
                acks: sm_rx,
                request_every: o.sm.unwrap_or(0) as u64,
            },
        ));
    }

    let pid = cli.server_pid;
    let me = std::process::id();
    tokio::time::sleep_until(t_start + warmup).await;
    let srv0 = pid.map(ProcStats::read).transpose()?;
    let watch0 = o
        .watch
        .iter()
        .map(|(_, p)| ProcStats::read(*p))
        .collect::<Result<Vec<_>>>()?;
    let own0 = ProcStats::read(me).ok();
    let got0 = received.load(Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    let srv1 = pid.map(ProcStats::read).transpose()?;
    let watch1 = o
        .watch
        .iter()
        .map(|(_, p)| ProcStats::read(*p))
        .collect::<Result<Vec<_>>>()?;
    let own1 = ProcStats::read(me).ok();
    let got1 = received.load(Ordering::Relaxed);

    let mut halves = Vec::new();
    let mut sent = 0u64;
    let mut ack_delay = Duration::ZERO;
    while let Some(r) = writers.join_next().await {
        let (w, k, d) = r??;
        halves.push(w);
        sent += k;
        ack_delay = ack_delay.max(d);
    }
    // Wait for what is still in flight.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut in_window = 0u64;
    let mut errors = 0u64;
    let (mut sm_requests, mut sm_acks, mut sm_last_h_sum) = (0u64, 0u64, 0u64);
    let mut lat = Vec::new();
    while let Some(r) = readers.join_next().await {
        let st = r??;
        in_window += st.in_window;
        errors += st.errors;
        sm_requests += st.sm_requests;
        sm_acks += st.sm_acks;
        sm_last_h_sum += u64::from(st.last_h.unwrap_or(0));
        lat.extend(st.lat_ns);
    }
    drop(halves);
    lat.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    let secs = duration.as_secs_f64();
    let rate = in_window as f64 / secs;
    let srv = match (srv0, srv1) {
        (Some(a), Some(b)) if in_window > 0 => format!(
            "server_cpu_us_per_msg={:.2} server_cpu_cores={:.2}",
            (b.cpu_secs - a.cpu_secs) * 1e6 / in_window as f64,
            (b.cpu_secs - a.cpu_secs) / secs
        ),
        _ => "server_cpu_us_per_msg=n/a server_cpu_cores=n/a".into(),
    };
    let watched: String = o
        .watch
        .iter()
        .zip(watch0.iter().zip(&watch1))
        .map(|((name, _), (a, b))| {
            format!(
                " {name}_cpu_us_per_msg={:.2} {name}_cpu_cores={:.2}",
                (b.cpu_secs - a.cpu_secs) * 1e6 / in_window.max(1) as f64,
                (b.cpu_secs - a.cpu_secs) / secs
            )
        })
        .collect();
    let tool = match (own0, own1) {
        (Some(a), Some(b)) => format!(
            "tool_cpu_cores={:.2} tool_cpu_us_per_msg={:.2}",
            (b.cpu_secs - a.cpu_secs) / secs,
            (b.cpu_secs - a.cpu_secs) * 1e6 / (got1 - got0).max(1) as f64
        ),
        _ => "tool_cpu_cores=n/a".into(),
    };
    let mode = match o.pace {
        Pace::Flood { window } => format!("flood window={window}"),
        Pace::Rate(r) => format!("rate target={r:.0}/s"),
    };
    let features = format!(
        "sm={} csi={}",
        match o.sm {
            Some(k) => format!(
                "on request_every={k} server_r={sm_requests} server_a={sm_acks} server_h_total={sm_last_h_sum} ack_delay_max_ms={:.1}",
                ack_delay.as_secs_f64() * 1e3
            ),
            None => "off".into(),
        },
        match o.csi {
            Some(Csi::Active) => "active",
            Some(Csi::Inactive) => "inactive",
            None => "none",
        }
    );
    println!(
        "msg: mode={mode} {features} pairs={} senders={n} duration_s={secs:.1} delivered_per_s={rate:.0} p50_us={:.1} p99_us={:.1} max_us={:.1} {srv}{watched} {tool} sent={sent} received={got} lost={} errors={errors}",
        o.pairs,
        percentile_u64(&lat, 0.5) as f64 / 1e3,
        percentile_u64(&lat, 0.99) as f64 / 1e3,
        lat.last().copied().unwrap_or(0) as f64 / 1e3,
        sent.saturating_sub(got),
    );
    if sent > got {
        eprintln!("msg: {} messages not delivered within 5 s", sent - got);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> (Vec<Seen>, usize) {
        let mut v = Vec::new();
        let used = scan(buf, |s| v.push(s));
        (v, used)
    }

    #[test]
    fn scans_messages_and_counts_other_stanzas() {
        let s = b"<presence from='a'/><message from='a/b' to='c' type='chat' id='m1'><body>123</body></message><iq type='result'/><message xmlns='jabber:client' type=\"chat\"><body xml:lang='en'>45 x</body></message>";
        let (v, used) = all(s);
        assert_eq!(
            v,
            vec![
                Seen::Stanza,
                Seen::Delivered(123),
                Seen::Stanza,
                Seen::Delivered(45)
            ]
        );
        assert_eq!(used, s.len());
    }

    #[test]
    fn keeps_a_split_message() {
        let s = b"<message type='chat'><body>7</body></message><message type='chat'><bo";
        let (v, used) = all(s);
        assert_eq!(v, vec![Seen::Delivered(7)]);
        assert_eq!(&s[used..], b"<message type='chat'><bo");
        let s = b"<iq/><mess";
        let (v, used) = all(s);
        assert_eq!(v, vec![Seen::Stanza]);
        assert_eq!(&s[used..], b"<mess");
    }

    #[test]
    fn sees_stream_management_and_other_stanzas_in_order() {
        let s = b"<presence from='a'><show>away</show></presence><r xmlns='urn:xmpp:sm:3'/><message type='chat'><body>5</body></message><iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq><a xmlns='urn:xmpp:sm:3' h='42'/><a xmlns='urn:xmpp:sm:3' h=\"x\"/><enabled xmlns='urn:xmpp:sm:3'/><r xmlns='urn:xmpp:sm:3'/>";
        let (v, used) = all(s);
        assert_eq!(
            v,
            vec![
                Seen::Stanza,
                Seen::AckRequest,
                Seen::Delivered(5),
                Seen::Stanza,
                Seen::Ack(Some(42)),
                Seen::Ack(None),
                Seen::AckRequest
            ]
        );
        assert_eq!(used, s.len());
        // A request split across reads is kept whole.
        let s = b"<message type='chat'><body>7</body></message><r xmlns='urn:xm";
        let (v, used) = all(s);
        assert_eq!(v, vec![Seen::Delivered(7)]);
        assert_eq!(&s[used..], b"<r xmlns='urn:xm");
        // `<reason>` and `<active>` are not `<r>` and `<a>`.
        let (v, _) = all(b"<reason/><active xmlns='urn:xmpp:csi:0'/>");
        assert!(v.is_empty());
    }

    #[test]
    fn attributes_are_found_by_whole_name() {
        assert_eq!(attr(b"<a xmlns='x' h='3'/>", b"h"), Some(&b"3"[..]));
        assert_eq!(attr(b"<a hh='1' h=\"2\"/>", b"h"), Some(&b"2"[..]));
        assert_eq!(attr(b"<message totype='error'>", b"type"), None);
    }

    #[test]
    fn counts_bounces_and_foreign_messages_as_errors() {
        let s = b"<message type='error'><body>9</body><error/></message><message type='chat'><body>hello</body></message><message/><messages>";
        let (v, _) = all(s);
        assert_eq!(v, vec![Seen::Error, Seen::Error, Seen::Error]);
    }
}

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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::sync::{Semaphore, watch};

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
#[derive(Clone, Copy, Debug)]
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

/// What [`scan`] found in one message.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A delivered message whose body starts with this send time.
    Delivered(u64),
    /// A bounce or a message that is not ours.
    Error,
}

/// Scans `buf` for complete `<message>` elements, calls `on` for each and returns how many
/// bytes are consumed (the rest may hold the start of an element split across reads).
fn scan(buf: &[u8], mut on: impl FnMut(Seen)) -> usize {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(start) = find(rest, b"<message") else {
            // Keep a possibly split tag at the end.
            return pos + rest.iter().rposition(|&b| b == b'<').unwrap_or(rest.len());
        };
        let msg = &rest[start..];
        let Some(gt) = msg.iter().position(|&b| b == b'>') else {
            return pos + start;
        };
        let open_tag = &msg[..=gt];
        match open_tag.get(8) {
            // `<message>`, `<message …` — anything else (`<messages`) is not a message.
            Some(b'>' | b' ' | b'\t' | b'\n' | b'\r' | b'/') => {}
            _ => {
                pos += start + 8;
                continue;
            }
        }
        if open_tag.ends_with(b"/>") {
            on(Seen::Error);
            pos += start + gt + 1;
            continue;
        }
        let Some(end) = find(msg, b"</message>") else {
            return pos + start;
        };
        let whole = &msg[..end];
        if find(open_tag, b"type='error'").is_some() || find(open_tag, b"type=\"error\"").is_some()
        {
            on(Seen::Error);
        } else {
            on(body_ts(whole).map_or(Seen::Error, Seen::Delivered));
        }
        pos += start + end + b"</message>".len();
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

/// Reads until `stop` changes or the stream ends; acknowledges deliveries on `ack`.
async fn reader(
    mut r: ClientReader,
    epoch: Instant,
    win: Window,
    ack: Option<Arc<Semaphore>>,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<RecvStats> {
    let mut st = RecvStats::default();
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
            bail!("server closed the stream during the run");
        }
        let now = ns_since(epoch);
        let mut delivered = 0usize;
        let consumed = scan(&buf, |seen| match seen {
            Seen::Delivered(ts) => {
                delivered += 1;
                if win.contains(now) {
                    st.in_window += 1;
                }
                if win.contains(ts) {
                    st.lat_ns.push(now.saturating_sub(ts));
                }
            }
            Seen::Error => st.errors += 1,
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
}

/// Sends until the plan's end; returns the half (kept open until the readers finish) and the
/// number of messages sent.
async fn writer(mut w: ClientWriter, p: SendPlan) -> Result<(ClientWriter, u64)> {
    let SendPlan {
        to,
        epoch,
        first,
        end,
        pace,
        window,
        period,
    } = p;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut seq = 0u64;
    match pace {
        Pace::Flood { window: max } => loop {
            if seq == 0 {
                tokio::time::sleep_until(first).await;
            }
            let Ok(permit) = tokio::time::timeout_at(end, window.acquire()).await else {
                break;
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
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                buf.clear();
                message(&mut buf, &to, seq, ns_since(epoch));
                seq += 1;
                w.send(&buf).await?;
            }
        }
    }
    Ok((w, seq))
}

/// Runs the workload and prints one line of figures.
pub async fn run(cli: &Cli, t: &Arc<crate::client::Target>, o: MsgOpts) -> Result<()> {
    if o.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let n = 2 * o.pairs;
    let (mut clients, _) = login_range(cli, t, 0, n, o.concurrency, 0).await?;
    for c in &mut clients {
        c.send(b"<presence/>").await?;
    }
    // Let the presence echoes arrive before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
        readers.spawn(reader(
            r,
            epoch,
            win,
            ack,
            received.clone(),
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
            },
        ));
    }

    let pid = cli.server_pid;
    let me = std::process::id();
    tokio::time::sleep_until(t_start + warmup).await;
    let srv0 = pid.map(ProcStats::read).transpose()?;
    let own0 = ProcStats::read(me).ok();
    let got0 = received.load(Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    let srv1 = pid.map(ProcStats::read).transpose()?;
    let own1 = ProcStats::read(me).ok();
    let got1 = received.load(Ordering::Relaxed);

    let mut halves = Vec::new();
    let mut sent = 0u64;
    while let Some(r) = writers.join_next().await {
        let (w, k) = r??;
        halves.push(w);
        sent += k;
    }
    // Wait for what is still in flight.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut in_window = 0u64;
    let mut errors = 0u64;
    let mut lat = Vec::new();
    while let Some(r) = readers.join_next().await {
        let st = r??;
        in_window += st.in_window;
        errors += st.errors;
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
    println!(
        "msg: mode={mode} pairs={} senders={n} duration_s={secs:.1} delivered_per_s={rate:.0} p50_us={:.1} p99_us={:.1} max_us={:.1} {srv} {tool} sent={sent} received={got} lost={} errors={errors}",
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
    fn scans_messages_and_skips_other_stanzas() {
        let s = b"<presence from='a'/><message from='a/b' to='c' type='chat' id='m1'><body>123</body></message><iq type='result'/><message xmlns='jabber:client' type=\"chat\"><body xml:lang='en'>45 x</body></message>";
        let (v, used) = all(s);
        assert_eq!(v, vec![Seen::Delivered(123), Seen::Delivered(45)]);
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
        assert!(v.is_empty());
        assert_eq!(&s[used..], b"<mess");
    }

    #[test]
    fn counts_bounces_and_foreign_messages_as_errors() {
        let s = b"<message type='error'><body>9</body><error/></message><message type='chat'><body>hello</body></message><message/><messages>";
        let (v, _) = all(s);
        assert_eq!(v, vec![Seen::Error, Seen::Error, Seen::Error]);
    }
}

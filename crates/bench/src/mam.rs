//! XEP-0313 archive workloads.
//!
//! * `mam-fill` writes N messages into one account's archive in Canto's SQLite file through
//!   `canto_storage`'s own API ([`ArchiveStore::append_many`], one transaction per batch), row
//!   for row what the server's `mam` module stores: the stanza as it was routed (`from` stamped
//!   with the sender's full JID, serialized in the `jabber:client` namespace), `with` the bare
//!   JID of the partner, increasing timestamps, random ids. Messages alternate between sent
//!   and received and rotate over a few contacts (`contact1@HOST` …), so `with` filters have
//!   something to select.
//! * `mam` logs in to a running server and times queries against that archive, one at a time:
//!   pages of `--max` items from the middle (RSM `<after/>` and `<before/>` an id there, a
//!   `with` filter, a `start`/`end` window, a `start` alone), the last page, and the item count
//!   alone (XEP-0059 §2.7, `<max>0</max>`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use canto_storage::{ArchiveStore, NewArchiveItem, PostgresBackend, SqliteBackend};
use canto_xml::Element;

use crate::client::{Client, Target};
use crate::proc_stats::ProcStats;
use crate::{Cli, ms, percentile};

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";
const NS_CLIENT: &str = "jabber:client";
/// The archive store of Canto's `mam` module.
const STORE: &str = "archive";

/// `user@host` split; the parts as stored (already normalized).
pub fn split_jid(jid: &str) -> Result<(String, String)> {
    match jid.split_once('@') {
        Some((u, h)) if !u.is_empty() && !h.is_empty() && !h.contains('/') => {
            Ok((u.to_owned(), h.to_owned()))
        }
        _ => bail!("expected a bare JID user@host, got {jid:?}"),
    }
}

/// Parameters of `mam-fill`.
#[derive(Clone, Debug)]
pub struct FillOpts {
    /// The SQLite file.
    pub db: PathBuf,
    /// A PostgreSQL URL to fill instead of `db`.
    pub postgres: Option<String>,
    /// Owner of the archive.
    pub user: String,
    /// Messages to append.
    pub count: usize,
    /// Contacts the messages rotate over.
    pub contacts: usize,
    /// Milliseconds between two messages.
    pub step_ms: i64,
    /// Stamp of the first message (default: so that the last one is now).
    pub start_ms: Option<i64>,
    /// Messages per transaction.
    pub batch: usize,
}

/// The `n`-th message of a filled archive, as Canto's `mam` module would have stored it in the
/// owner's archive: `(with, stanza)`. Even `n` are sent by the owner (the server stamps the
/// sender's full JID), odd `n` received from the contact.
pub fn fill_message(user: &str, host: &str, contacts: usize, n: usize) -> (String, Vec<u8>) {
    let contact = format!("contact{}@{host}", (n / 2) % contacts.max(1) + 1);
    let me = format!("{user}@{host}");
    let (from, to) = if n.is_multiple_of(2) {
        (format!("{me}/bench"), contact.clone())
    } else {
        (format!("{contact}/phone"), format!("{me}/bench"))
    };
    // Attributes in the order the server has them: the client's, then the stamped `from`.
    let el = Element::new("message", NS_CLIENT)
        .with_attr("id", format!("fill-{n}"))
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("from", from)
        .with_child(Element::new("body", NS_CLIENT).with_text(format!(
            "Message {n} of the benchmark archive, with some text."
        )));
    (contact, el.to_bytes_in(NS_CLIENT))
}

/// Fills the archive; prints one line of figures.
pub async fn fill(o: FillOpts) -> Result<()> {
    let (user, host) = split_jid(&o.user)?;
    if o.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // The backend the server opens (migrations included), kept to close it at the end.
    let (backend, sqlite): (Arc<dyn ArchiveStore>, Option<SqliteBackend>) = match &o.postgres {
        Some(url) => (
            Arc::new(
                PostgresBackend::open(url, 2)
                    .await
                    .context("opening the PostgreSQL database")?,
            ),
            None,
        ),
        None => {
            let b = SqliteBackend::open(&o.db)
                .await
                .with_context(|| format!("opening {}", o.db.display()))?;
            (Arc::new(b.clone()), Some(b))
        }
    };
    let step = o.step_ms.max(1);
    let count_i64 = i64::try_from(o.count).context("count")?;
    let start_ms = o
        .start_ms
        .unwrap_or_else(|| now_ms() - count_i64.saturating_sub(1) * step);
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut batch = Vec::with_capacity(o.batch.min(o.count));
    let mut last_report = Instant::now();
    while done < o.count {
        let n = o.batch.min(o.count - done);
        batch.clear();
        for k in done..done + n {
            let (with, data) = fill_message(&user, &host, o.contacts, k);
            batch.push(NewArchiveItem {
                with,
                stamp_ms: start_ms + i64::try_from(k).context("index")? * step,
                data,
            });
        }
        backend.append_many(STORE, &host, &user, &batch).await?;
        done += n;
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "mam-fill: {done}/{} ({:.0} rows/s)",
                o.count,
                done as f64 / t0.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Closing checkpoints the WAL into the file.
    if let Some(b) = &sqlite {
        b.close().await;
    }
    let size = ["", "-wal"]
        .iter()
        .filter_map(|s| {
            let mut p = o.db.clone().into_os_string();
            p.push(s);
            std::fs::metadata(p).ok()
        })
        .map(|m| m.len())
        .sum::<u64>();
    println!(
        "mam-fill: user={user}@{host} rows={} contacts={} batch={} seconds={secs:.1} rows_per_s={:.0} first_stamp={} last_stamp={} db_mib={:.0}",
        o.count,
        o.contacts,
        o.batch,
        o.count as f64 / secs.max(1e-9),
        xep0082(start_ms),
        xep0082(start_ms + count_i64.saturating_sub(1) * step),
        size as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds as an XEP-0082 DateTime with milliseconds, UTC.
fn xep0082(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = canto_stanza::datetime::civil_from_days(days);
    let s = rem / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        rem % 1000
    )
}

/// An XEP-0082 DateTime in UTC (`…Z`, fractions allowed) as milliseconds.
fn parse_xep0082(s: &str) -> Option<i64> {
    let (date, time) = s.trim().strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    Some((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60) * 1000 + (sec * 1000.0) as i64)
}

/// Query kinds of the `mam` workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `start` = a time in the middle, no end (also collects the anchor ids).
    Start,
    /// RSM `<after>` an id in the middle.
    After,
    /// RSM `<before>` an id in the middle.
    Before,
    /// `with` one contact, RSM `<after>` an id in the middle.
    With,
    /// `start` and `end` (`--window-s` apart) in the middle.
    Window,
    /// `with` one contact and a `start`/`end` window in the middle.
    WithWindow,
    /// The last page (RSM `<before/>`), what a client asks for first.
    Last,
    /// Only the item count (RSM `<max>0</max>`, XEP-0059 §2.7).
    Count,
}

/// Parameters of the `mam` workload.
#[derive(Clone, Debug)]
pub struct QueryOpts {
    /// The account whose archive is queried.
    pub user: String,
    /// Queries per kind.
    pub queries: usize,
    /// Page size.
    pub max: usize,
    /// Positions in the middle of the archive the queries rotate over.
    pub anchors: usize,
    /// Length of the time windows, seconds.
    pub window_s: i64,
    /// `with` for the filtered kinds.
    pub with: Option<String>,
    /// What to time.
    pub kinds: Vec<Kind>,
}

/// What one query returned.
struct Answer {
    /// `<result/>` messages received.
    results: usize,
    /// The first result's id.
    first_id: Option<String>,
    /// RSM `<count>`, if any.
    count: Option<u64>,
    /// `<fin complete='true'>`.
    complete: bool,
}

/// Sends one MAM query and reads until its answer; returns what came back.
async fn ask(c: &mut Client, n: usize, query: Element) -> Result<Answer> {
    let id = format!("q{n}");
    let qid = format!("b{n}");
    let iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id.clone())
        .with_child(query.with_attr("queryid", qid.clone()));
    c.send(&iq.to_bytes_in(NS_CLIENT)).await?;
    let mut a = Answer {
        results: 0,
        first_id: None,
        count: None,
        complete: false,
    };
    loop {
        let el = c.next().await?;
        match el.name() {
            "message" => {
                if let Some(r) = el.get_child("result", NS_MAM)
                    && r.attr("queryid") == Some(qid.as_str())
                {
                    if a.first_id.is_none() {
                        a.first_id = r.attr("id").map(str::to_owned);
                    }
                    a.results += 1;
                }
            }
            "iq" if el.attr("id") == Some(id.as_str()) => {
                if el.attr("type") != Some("result") {
                    bail!("query failed: {el}");
                }
                let fin = el
                    .get_child("fin", NS_MAM)
                    .ok_or_else(|| anyhow!("no <fin/>: {el}"))?;
                a.complete = fin.attr("complete") == Some("true");
                a.count = fin
                    .get_child("set", NS_RSM)
                    .and_then(|s| s.get_child("count", NS_RSM))
                    .and_then(|c| c.text().trim().parse().ok());
                return Ok(a);
            }
            _ => {}
        }
    }
}

/// A MAM query element: the form fields (`(var, value)`) and the RSM set.
fn mam_query(fields: &[(&str, String)], max: usize, rsm: Option<(&str, &str)>) -> Element {
    let mut q = Element::new("query", NS_MAM);
    if !fields.is_empty() {
        let field = |var: &str, value: &str| {
            Element::new("field", NS_DATA)
                .with_attr("var", var)
                .with_child(Element::new("value", NS_DATA).with_text(value.to_owned()))
        };
        let mut x = Element::new("x", NS_DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", NS_MAM).with_attr("type", "hidden"));
        for (var, value) in fields {
            x.push_child(field(var, value));
        }
        q.push_child(x);
    }
    let mut set = Element::new("set", NS_RSM)
        .with_child(Element::new("max", NS_RSM).with_text(max.to_string()));
    if let Some((name, id)) = rsm {
        set.push_child(Element::new(name, NS_RSM).with_text(id.to_owned()));
    }
    q.with_child(set)
}

/// The archive's first and last timestamps (XEP-0313 §7.1 metadata).
async fn metadata(c: &mut Client) -> Result<(i64, i64)> {
    let iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "meta")
        .with_child(Element::new("metadata", NS_MAM));
    c.send(&iq.to_bytes_in(NS_CLIENT)).await?;
    loop {
        let el = c.next().await?;
        if el.name() != "iq" || el.attr("id") != Some("meta") {
            continue;
        }
        let m = el
            .get_child("metadata", NS_MAM)
            .ok_or_else(|| anyhow!("no metadata (is mam enabled?): {el}"))?;
        let stamp = |name: &str| {
            m.get_child(name, NS_MAM)
                .and_then(|e| e.attr("timestamp"))
                .and_then(parse_xep0082)
        };
        return match (stamp("start"), stamp("end")) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("empty archive: {el}"),
        };
    }
}

/// Runs the workload and prints one line per query kind.
pub async fn run(cli: &Cli, t: &Arc<Target>, o: QueryOpts) -> Result<()> {
    let (user, host) = split_jid(&o.user)?;
    let mut c = Client::login(t, 0, &user, &cli.password, "mam-bench")
        .await
        .with_context(|| format!("login {user}"))?;
    let with = o.with.clone().unwrap_or_else(|| format!("contact1@{host}"));
    let (first, last) = metadata(&mut c).await?;
    let span = last - first;
    let anchors = o.anchors.max(1);
    // Times spread over the middle tenth of the archive (45 % … 55 %).
    let times: Vec<i64> = (0..anchors)
        .map(|i| first + span * 45 / 100 + span / 10 * i as i64 / anchors as i64)
        .collect();
    println!(
        "mam: user={user}@{host} archive_start={} archive_end={} max={} queries_per_kind={} anchors={anchors} window_s={} with={with}",
        xep0082(first),
        xep0082(last),
        o.max,
        o.queries,
        o.window_s,
    );
    // The anchor ids: the first item at or after each time (not timed: one warm-up round).
    let mut ids = Vec::with_capacity(anchors);
    for (i, &at) in times.iter().enumerate() {
        let a = ask(&mut c, i, mam_query(&[("start", xep0082(at))], 1, None)).await?;
        ids.push(
            a.first_id
                .ok_or_else(|| anyhow!("nothing after {}", xep0082(at)))?,
        );
    }
    let mut n = anchors;
    for kind in &o.kinds {
        let before = cli.server_pid.map(ProcStats::read).transpose()?;
        let mut lat = Vec::with_capacity(o.queries);
        let (mut results, mut complete_pages, mut count) = (0usize, 0usize, None);
        for i in 0..o.queries {
            let k = i % anchors;
            let (id, at) = (ids[k].as_str(), times[k]);
            let window = || {
                [
                    ("start", xep0082(at)),
                    ("end", xep0082(at + o.window_s * 1000)),
                ]
            };
            let q = match kind {
                Kind::Start => mam_query(&[("start", xep0082(at))], o.max, None),
                Kind::After => mam_query(&[], o.max, Some(("after", id))),
                Kind::Before => mam_query(&[], o.max, Some(("before", id))),
                Kind::With => mam_query(&[("with", with.clone())], o.max, Some(("after", id))),
                Kind::Window => mam_query(&window(), o.max, None),
                Kind::WithWindow => {
                    let [s, e] = window();
                    mam_query(&[("with", with.clone()), s, e], o.max, None)
                }
                Kind::Last => mam_query(&[], o.max, Some(("before", ""))),
                Kind::Count => mam_query(&[], 0, None),
            };
            n += 1;
            let t0 = Instant::now();
            let a = ask(&mut c, n, q).await?;
            lat.push(t0.elapsed());
            results += a.results;
            if a.complete {
                complete_pages += 1;
            }
            count = count.or(a.count);
        }
        let after = cli.server_pid.map(ProcStats::read).transpose()?;
        lat.sort();
        let cpu = match (before, after) {
            (Some(b), Some(a)) => format!(
                "{:.0}",
                (a.cpu_secs - b.cpu_secs) * 1e6 / o.queries.max(1) as f64
            ),
            _ => "n/a".into(),
        };
        println!(
            "mam: kind={} queries={} results_per_query={:.1} complete={complete_pages} count={} p50_ms={} p99_ms={} max_ms={} server_cpu_us_per_query={cpu}",
            clap::ValueEnum::to_possible_value(kind)
                .map_or_else(|| format!("{kind:?}"), |v| v.get_name().to_owned()),
            o.queries,
            results as f64 / o.queries.max(1) as f64,
            count.map_or("none".into(), |c| c.to_string()),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for ms in [0i64, 951_782_400_123, 1_700_000_000_000, 1_795_657_579_349] {
            assert_eq!(parse_xep0082(&xep0082(ms)), Some(ms));
        }
        assert_eq!(
            parse_xep0082("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_xep0082("nonsense"), None);
    }

    #[test]
    fn filled_messages_look_like_archived_ones() {
        let (with, data) = fill_message("alice", "localhost", 3, 0);
        assert_eq!(with, "contact1@localhost");
        assert_eq!(
            String::from_utf8(data).expect("utf-8"),
            "<message id='fill-0' to='contact1@localhost' type='chat' from='alice@localhost/bench'><body>Message 0 of the benchmark archive, with some text.</body></message>"
        );
        let (with, data) = fill_message("alice", "localhost", 3, 5);
        assert_eq!(with, "contact3@localhost");
        let s = String::from_utf8(data).expect("utf-8");
        assert!(s.contains("from='contact3@localhost/phone'"), "{s}");
        assert!(s.contains("to='alice@localhost/bench'"), "{s}");
        // Rotates over the contacts.
        assert_eq!(
            fill_message("alice", "localhost", 3, 6).0,
            "contact1@localhost"
        );
    }
}

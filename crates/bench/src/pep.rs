//! The PEP workloads (XEP-0163): one publish fanned out to R contacts that ask for the node's
//! notifications with `+notify` in their entity capabilities (XEP-0115), and publishes per
//! second on one node of one account.
//!
//! Every contact announces the same identity and features (among them
//! `urn:example:bench+notify`) under a `ver` computed as XEP-0115 §5.1 says, and answers any
//! disco#info query with exactly those, so that a server that verifies the hash (Canto) caches
//! it. Canto asks from the host domain (`caps-…` ids) when a session's own presence carries an
//! unknown `ver`; Prosody asks from the publisher's bare JID when the contact's presence
//! reaches it, which needs the publisher subscribed to the contact: so the subscription is
//! mutual.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use canto_xml::Element;
use sha1::Digest;

use crate::client::{Client, Target};
use crate::proc_stats::{ProcStats, ThreadCpu};
use crate::{Cli, login_range, ms, percentile};

/// The node published to.
pub const NODE: &str = "urn:example:bench";
/// The `node` of the contacts' caps.
const CAPS_NODE: &str = "https://canto.example/bench";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const CLIENT_NS: &str = "jabber:client";

/// The contacts' one identity: category, type, xml:lang, name.
const IDENTITY: (&str, &str, &str, &str) = ("client", "pc", "", "canto-bench");
/// The contacts' features.
const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/disco#info",
    "urn:example:bench",
    "urn:example:bench+notify",
];

/// Text in every item, so that a notification is the size of a small real payload (a mood, a
/// tune) rather than an empty element.
const PAD: &str = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.";

/// Longest wait for one stanza during provisioning's later steps and the timed part.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Warm-up publishes tried until every contact gets one.
const WARMUP_ATTEMPTS: usize = 10;
/// How long a warm-up publish waits for the contacts that have not got it.
const WARMUP_LIMIT: Duration = Duration::from_secs(5);

/// XEP-0115 §5.1: the verification string of identities (category, type, xml:lang, name) and
/// features (no forms): SHA-1, base64.
pub fn caps_ver(identities: &[(&str, &str, &str, &str)], features: &[&str]) -> String {
    let mut ids = identities.to_vec();
    ids.sort();
    let mut feats = features.to_vec();
    feats.sort();
    let mut s = String::new();
    for (c, t, l, n) in ids {
        s.push_str(&format!("{c}/{t}/{l}/{n}<"));
    }
    for f in feats {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// The contacts' presence: available, with their caps.
fn caps_presence() -> String {
    format!(
        "<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{}'/></presence>",
        caps_ver(&[IDENTITY], FEATURES)
    )
}

/// The answer to a disco#info query (any node: it is the caps node or none), or None when
/// `e` is not one.
fn disco_answer(e: &Element) -> Option<Vec<u8>> {
    if e.name() != "iq" || e.attr("type") != Some("get") {
        return None;
    }
    let q = e.get_child("query", NS_DISCO_INFO)?;
    let (category, kind, lang, name) = IDENTITY;
    let mut identity = Element::new("identity", NS_DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind)
        .with_attr("name", name);
    if !lang.is_empty() {
        identity = identity.with_attr("xml:lang", lang);
    }
    let mut query = Element::new("query", NS_DISCO_INFO).with_child(identity);
    if let Some(node) = q.attr("node") {
        query = query.with_attr("node", node);
    }
    for f in FEATURES {
        query = query.with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", *f));
    }
    let mut reply = Element::new("iq", CLIENT_NS)
        .with_attr("type", "result")
        .with_attr("id", e.attr("id").unwrap_or_default());
    if let Some(from) = e.attr("from") {
        reply = reply.with_attr("to", from);
    }
    Some(reply.with_child(query).to_bytes_in(CLIENT_NS))
}

/// A publish of item `item` to `node`, with publish-options setting `pubsub#max_items` when
/// `max_items` is given (XEP-0060 §7.1.5: they create the node so, or must match it).
fn publish_iq(node: &str, id: &str, item: &str, n: usize, max_items: Option<usize>) -> String {
    let options = max_items.map_or_else(String::new, |m| {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>\
             <field var='pubsub#max_items'><value>{m}</value></field></x></publish-options>"
        )
    });
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>\
         <item id='{item}'><entry xmlns='{NODE}'><n>{n}</n><text>{PAD}</text></entry></item>\
         </publish>{options}</pubsub></iq>"
    )
}

/// Whether `e` is the notification of item `item` of [`NODE`] from `owner` (a bare JID).
fn is_notification(e: &Element, owner: &str, item: &str) -> bool {
    e.name() == "message"
        && e.attr("from") == Some(owner)
        && e.get_child("event", NS_PUBSUB_EVENT)
            .and_then(|ev| ev.get_child("items", NS_PUBSUB_EVENT))
            .is_some_and(|items| {
                items.attr("node") == Some(NODE)
                    && items
                        .children()
                        .any(|i| i.name() == "item" && i.attr("id") == Some(item))
            })
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Reads until an element matches `pred`, for at most `limit` (Ok(None) then), answering the
/// disco#info queries that arrive meanwhile (counted in `answered`).
async fn wait_answering(
    c: &mut Client,
    limit: Duration,
    answered: &AtomicUsize,
    pred: impl Fn(&Element) -> bool,
) -> Result<Option<Element>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.next()).await {
            Ok(Ok(e)) => {
                if let Some(answer) = disco_answer(&e) {
                    c.send(&answer).await?;
                    answered.fetch_add(1, Ordering::Relaxed);
                } else if pred(&e) {
                    return Ok(Some(e));
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(None),
        }
    }
}

/// As [`wait_answering`], a timeout being an error about `what`.
async fn expect(
    c: &mut Client,
    what: &str,
    limit: Duration,
    answered: &AtomicUsize,
    pred: impl Fn(&Element) -> bool,
) -> Result<Element> {
    wait_answering(c, limit, answered, pred)
        .await?
        .ok_or_else(|| anyhow!("timed out waiting for {what}"))
}

/// Waits for the result of IQ `id` on `c`; an error result fails with the stanza.
async fn iq_result(c: &mut Client, id: &str, answered: &AtomicUsize) -> Result<Element> {
    let what = format!("the result of IQ {id}");
    let r = expect(c, &what, ROUND_LIMIT, answered, |e| {
        e.name() == "iq" && e.attr("id") == Some(id)
    })
    .await?;
    if r.attr("type") != Some("result") {
        bail!("IQ {id} failed: {r}");
    }
    Ok(r)
}

/// What one publish measured.
struct Round {
    /// From sending the publish until the last contact had the notification (None when some
    /// had none within the limit).
    all: Option<Duration>,
    /// Contacts without the notification within the limit.
    missing: usize,
    /// From sending the publish until its IQ result.
    result: Duration,
    /// Server CPU (all threads, from schedstat) from just before the publish until the last
    /// notification and the result were in.
    cpu: Option<Duration>,
}

/// Publishes item `item` and waits up to `limit` for every contact's notification.
async fn round(
    hub: &mut Client,
    clients: &mut Vec<Client>,
    owner: &str,
    item: &str,
    limit: Duration,
    server_pid: Option<u32>,
    answered: &Arc<AtomicUsize>,
) -> Result<Round> {
    let mut waits = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients.len().max(1));
    for mut c in clients.drain(..) {
        let (owner, item) = (owner.to_string(), item.to_string());
        let ready = ready_tx.clone();
        let answered = answered.clone();
        waits.spawn(async move {
            let _ = ready.send(()).await;
            drop(ready);
            let got = wait_answering(&mut c, limit, &answered, |e| {
                is_notification(e, &owner, &item)
            })
            .await?;
            Ok::<_, anyhow::Error>((c, got.map(|_| Instant::now())))
        });
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    let before = server_pid.and_then(|p| ThreadCpu::read(p).ok());
    let start = Instant::now();
    let id = format!("pub-{item}");
    hub.send(publish_iq(NODE, &id, item, 0, None).as_bytes())
        .await?;
    iq_result(hub, &id, answered).await?;
    let result = start.elapsed();
    let (mut last, mut missing) = (start, 0);
    while let Some(r) = waits.join_next().await {
        let (c, at) = r??;
        match at {
            Some(at) => last = last.max(at),
            None => missing += 1,
        }
        clients.push(c);
    }
    let cpu = match (before, server_pid.and_then(|p| ThreadCpu::read(p).ok())) {
        (Some(b), Some(a)) => Some(a.since(&b)),
        _ => None,
    };
    Ok(Round {
        all: (missing == 0).then(|| last - start),
        missing,
        result,
        cpu,
    })
}

/// `pep-fanout`: one account (PREFIX<FIRST>) with `contacts` contacts (the next accounts) in
/// mutual presence subscription, every contact online with caps that ask for [`NODE`]'s
/// notifications; the account publishes `publishes` items one after the other, each timed
/// until every contact has its notification. Run it on accounts without subscriptions.
pub async fn fanout(cli: &Cli, t: &Arc<Target>, contacts: usize, publishes: usize) -> Result<()> {
    let answered = Arc::new(AtomicUsize::new(0));
    let provision_start = Instant::now();
    let (mut hubs, _) = login_range(cli, t, 0, 1, 1, 0).await?;
    let mut hub = hubs.pop().ok_or_else(|| anyhow!("no hub"))?;
    let owner = bare(&hub.jid).to_string();
    let (clients, _) = login_range(cli, t, 1, contacts + 1, 50, 0).await?;
    hub.send(b"<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq><presence/>")
        .await?;
    // Provision: every contact comes online with its caps and subscribes to the hub; the hub
    // approves and subscribes back; the contact approves that and sends its presence again
    // (now that the hub receives it). The hub answers one request after the other, and
    // Prosody rewrites the hub's whole roster file on each change (several per contact).
    let provision_limit = Duration::from_secs(30) + Duration::from_millis(400) * contacts as u32;
    let presence = caps_presence();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let owner = owner.clone();
        let presence = presence.clone();
        let answered = answered.clone();
        tasks.spawn(async move {
            c.send(presence.as_bytes()).await?;
            c.send(format!("<presence to='{owner}' type='subscribe'/>").as_bytes())
                .await?;
            // The approval shows as `subscribed` (RFC 6121 §3.2.3) or, where a server only
            // pushes it to the roster (Prosody), as the hub's available presence.
            let (mut approved, mut asked) = (false, false);
            let what = format!("the hub's approval and request ({})", c.jid);
            while !(approved && asked) {
                let e = expect(&mut c, &what, provision_limit, &answered, |e| {
                    e.name() == "presence" && e.attr("from").is_some_and(|f| bare(f) == owner)
                })
                .await?;
                match e.attr("type") {
                    Some("subscribed") | None => approved = true,
                    Some("subscribe") => {
                        c.send(format!("<presence to='{owner}' type='subscribed'/>").as_bytes())
                            .await?;
                        asked = true;
                    }
                    _ => {}
                }
            }
            c.send(presence.as_bytes()).await?;
            Ok::<_, anyhow::Error>(c)
        });
    }
    // A server may deliver a request twice: approve each, ask each contact once.
    let mut approved = HashSet::new();
    while approved.len() < contacts {
        let what = format!("subscription requests ({} of {contacts})", approved.len());
        let e = expect(&mut hub, &what, provision_limit, &answered, |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await?;
        if let Some(from) = e.attr("from") {
            let from = bare(from).to_string();
            let mut out = format!("<presence to='{from}' type='subscribed'/>");
            if approved.insert(from.clone()) {
                out.push_str(&format!("<presence to='{from}' type='subscribe'/>"));
            }
            hub.send(out.as_bytes()).await?;
        }
    }
    let mut clients = Vec::new();
    while let Some(r) = tasks.join_next().await {
        clients.push(r??);
    }
    let provision = provision_start.elapsed();
    // Warm-up: publish until every contact gets the notification (the server may still be
    // learning the caps, or be told of the last presences).
    let mut warmups = 0;
    loop {
        warmups += 1;
        let item = format!("warm{warmups}-{}", rand::random::<u32>());
        let r = round(
            &mut hub,
            &mut clients,
            &owner,
            &item,
            WARMUP_LIMIT,
            None,
            &answered,
        )
        .await?;
        if r.missing == 0 {
            break;
        }
        if warmups == WARMUP_ATTEMPTS {
            bail!(
                "after {warmups} warm-up publishes, {} of {contacts} contacts still get no notification",
                r.missing
            );
        }
    }
    let caps_queries = answered.load(Ordering::Relaxed);
    let ticks_before = cli.server_pid.map(ProcStats::read).transpose()?;
    let (mut times, mut results, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=publishes {
        let item = format!("i{n}-{}", rand::random::<u32>());
        let r = round(
            &mut hub,
            &mut clients,
            &owner,
            &item,
            ROUND_LIMIT,
            cli.server_pid,
            &answered,
        )
        .await?;
        let Some(all) = r.all else {
            bail!(
                "publish {n}: {} of {contacts} contacts had no notification after {} s",
                r.missing,
                ROUND_LIMIT.as_secs()
            );
        };
        times.push(all);
        results.push(r.result);
        cpus.extend(r.cpu);
    }
    let ticks_after = cli.server_pid.map(ProcStats::read).transpose()?;
    times.sort();
    results.sort();
    cpus.sort();
    let cpu_mean = (cpus.len() == publishes && publishes > 0).then(|| {
        format!(
            "{:.2}",
            cpus.iter().sum::<Duration>().as_secs_f64() * 1e3 / publishes as f64
        )
    });
    // The kernel's share: on loopback, a send also runs the receiving side's TCP input.
    let cpu_ticks = match (ticks_before, ticks_after) {
        (Some(b), Some(a)) if publishes > 0 => format!(
            "{:.1} server_kernel_share={:.2}",
            (a.cpu_secs - b.cpu_secs) * 1e3 / publishes as f64,
            (a.sys_secs - b.sys_secs) / (a.cpu_secs - b.cpu_secs).max(0.01)
        ),
        _ => "n/a".into(),
    };
    println!(
        "pep-fanout: contacts={contacts} publishes={publishes} provision_s={:.1} warmup_publishes={warmups} caps_queries_answered={caps_queries} all_received_p50_ms={} all_received_p99_ms={} all_received_max_ms={} publish_result_p50_ms={} server_cpu_ms_per_publish={} server_cpu_ms_per_publish_p50={} server_cpu_ms_per_publish_ticks={cpu_ticks}",
        provision.as_secs_f64(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
        ms(percentile(&results, 0.5)),
        cpu_mean.unwrap_or_else(|| "n/a".into()),
        if cpus.len() == publishes {
            ms(percentile(&cpus, 0.5))
        } else {
            "n/a".into()
        },
    );
    Ok(())
}

/// The number of a `pep-publish` IQ answer (`q<N>`).
fn publish_number(e: &Element) -> Option<usize> {
    if e.name() != "iq" {
        return None;
    }
    e.attr("id")?.strip_prefix('q')?.parse().ok()
}

/// Parameters of `pep-publish`.
#[derive(Clone, Debug)]
pub struct PublishOpts {
    /// Seconds measured.
    pub seconds: f64,
    /// Seconds of publishing before the measurement starts.
    pub warmup: f64,
    /// Publishes in flight.
    pub window: usize,
    /// `pubsub#max_items` of the node (set with publish-options on the first publish).
    pub max_items: usize,
    /// The node.
    pub node: String,
}

/// `pep-publish`: one account (PREFIX<FIRST>) publishes to one node of its own as fast as
/// `window` publishes in flight allow: IQ results per second, their latency, server CPU per
/// publish.
pub async fn publish(cli: &Cli, t: &Arc<Target>, o: &PublishOpts) -> Result<()> {
    let answered = AtomicUsize::new(0);
    let (mut cs, _) = login_range(cli, t, 0, 1, 1, 0).await?;
    let mut c = cs.pop().ok_or_else(|| anyhow!("no client"))?;
    // The first publish creates the node with max_items (or checks it against an existing
    // node: a node left by a run with another --max-items fails here).
    let first = format!("first-{}", rand::random::<u32>());
    c.send(publish_iq(&o.node, "create", &first, 0, Some(o.max_items)).as_bytes())
        .await?;
    iq_result(&mut c, "create", &answered).await?;
    let (mut reader, mut writer) = c.split();
    let window = Arc::new(tokio::sync::Semaphore::new(o.window.max(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let sent_at: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let writer_task = {
        let (window, stop, sent_at, node) = (
            window.clone(),
            stop.clone(),
            sent_at.clone(),
            o.node.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                window.acquire().await?.forget();
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, anyhow::Error>(n);
                }
                n += 1;
                let iq = publish_iq(&node, &format!("q{n}"), &format!("p{n}"), n, None);
                if let Ok(mut m) = sent_at.lock() {
                    m.insert(n, Instant::now());
                }
                writer.send(iq.as_bytes()).await?;
            }
        })
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(o.seconds);
    let (mut done, mut done_at_from) = (0usize, None);
    let (mut cpu_from, mut t_from) = (None, start);
    let (cpu_to, t_to);
    let mut lat = Vec::new();
    let mut errors = 0usize;
    // Until the end of the measured interval; then the writer stops and what is still in
    // flight is drained.
    loop {
        let e = match tokio::time::timeout(ROUND_LIMIT, reader.next()).await {
            Ok(r) => r?,
            Err(_) => bail!("no publish result for {} s", ROUND_LIMIT.as_secs()),
        };
        let Some(n) = publish_number(&e) else {
            continue;
        };
        let now = Instant::now();
        if e.attr("type") != Some("result") {
            errors += 1;
            if errors == 1 {
                eprintln!("pep-publish: first failed publish: {e}");
            }
        }
        let sent = sent_at.lock().ok().and_then(|mut m| m.remove(&n));
        done += 1;
        if done_at_from.is_none() {
            if now >= measure_from {
                done_at_from = Some(done);
                t_from = now;
                cpu_from = cli.server_pid.map(ProcStats::read).transpose()?;
            }
        } else {
            if let Some(s) = sent {
                lat.push(now - s);
            }
            if now >= measure_to {
                t_to = now;
                cpu_to = cli.server_pid.map(ProcStats::read).transpose()?;
                stop.store(true, Ordering::Relaxed);
                // The writer may be waiting for a slot: it wakes, sees `stop` and ends.
                window.add_permits(1);
                break;
            }
        }
        window.add_permits(1);
    }
    let sent = writer_task.await??;
    // Whatever the writer sent after the check above is in `sent_at` now: drain it.
    while !sent_at.lock().map(|m| m.is_empty()).unwrap_or(true) {
        let e = match tokio::time::timeout(ROUND_LIMIT, reader.next()).await {
            Ok(r) => r?,
            Err(_) => bail!(
                "publishes still unanswered after {} s",
                ROUND_LIMIT.as_secs()
            ),
        };
        if let Some(n) = publish_number(&e) {
            if e.attr("type") != Some("result") {
                errors += 1;
            }
            if let Ok(mut m) = sent_at.lock() {
                m.remove(&n);
            }
        }
    }
    if errors > 0 {
        bail!("{errors} of {sent} publishes failed");
    }
    let Some(a) = done_at_from else {
        bail!("the measured interval saw no results");
    };
    let b = done;
    let count = b - a;
    let wall = (t_to - t_from).as_secs_f64();
    lat.sort();
    let cpu = match (cpu_from, cpu_to) {
        (Some(f), Some(t)) if count > 0 => format!(
            "{:.0} server_cpu_cores={:.2} server_kernel_share={:.2}",
            (t.cpu_secs - f.cpu_secs) * 1e6 / count as f64,
            (t.cpu_secs - f.cpu_secs) / wall,
            (t.sys_secs - f.sys_secs) / (t.cpu_secs - f.cpu_secs).max(0.01)
        ),
        _ => "n/a".into(),
    };
    println!(
        "pep-publish: node={} max_items={} window={} seconds={:.1} publishes={count} publishes_per_s={:.0} result_p50_ms={} result_p99_ms={} server_cpu_us_per_publish={cpu}",
        o.node,
        o.max_items,
        o.window,
        wall,
        count as f64 / wall,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ver_matches_xep_0115_example() {
        // XEP-0115 §5.2.
        let ver = caps_ver(
            &[("client", "pc", "", "Exodus 0.9.1")],
            &[
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
                "http://jabber.org/protocol/caps",
            ],
        );
        assert_eq!(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn features_ask_for_the_node() {
        assert!(FEATURES.contains(&format!("{NODE}+notify").as_str()));
    }

    #[test]
    fn disco_answer_echoes_the_query() {
        let q = Element::new("iq", CLIENT_NS)
            .with_attr("type", "get")
            .with_attr("id", "caps-1")
            .with_attr("from", "localhost")
            .with_child(Element::new("query", NS_DISCO_INFO).with_attr("node", "n#v"));
        let a = String::from_utf8(disco_answer(&q).unwrap_or_default()).unwrap_or_default();
        assert!(
            a.contains("id=\"caps-1\"") || a.contains("id='caps-1'"),
            "{a}"
        );
        assert!(a.contains("localhost") && a.contains("n#v"), "{a}");
        assert!(a.contains("urn:example:bench+notify"), "{a}");
        let r = Element::new("iq", CLIENT_NS).with_attr("type", "result");
        assert!(disco_answer(&r).is_none());
    }

    #[test]
    fn notification_matches_item() {
        let m = Element::new("message", CLIENT_NS)
            .with_attr("from", "u@h")
            .with_child(
                Element::new("event", NS_PUBSUB_EVENT).with_child(
                    Element::new("items", NS_PUBSUB_EVENT)
                        .with_attr("node", NODE)
                        .with_child(Element::new("item", NS_PUBSUB_EVENT).with_attr("id", "x")),
                ),
            );
        assert!(is_notification(&m, "u@h", "x"));
        assert!(!is_notification(&m, "u@h", "y"));
        assert!(!is_notification(&m, "v@h", "x"));
    }
}

//! The fan-out workload: presence of one account reaching R subscribed contacts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::client::{Client, Target};
use crate::proc_stats::ProcStats;
use crate::{Cli, login_range, ms, percentile};

/// Reads until an element matches `pred`, for at most `limit`.
async fn wait_for(
    c: &mut Client,
    what: &str,
    limit: Duration,
    pred: impl Fn(&canto_xml::Element) -> bool,
) -> Result<canto_xml::Element> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.next()).await {
            Ok(Ok(e)) if pred(&e) => return Ok(e),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("timed out waiting for {what}"),
        }
    }
}

/// Longest wait for one stanza during the timed part.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// Runs the workload and prints one line of figures.
pub async fn run(cli: &Cli, t: &Arc<Target>, contacts: usize, rounds: usize) -> Result<()> {
    let hub_jid = format!("{}{}@{}", cli.user_prefix, cli.first, cli.domain);
    let (mut hubs, _) = login_range(cli, t, 0, 1, 1, 0).await?;
    let mut hub = hubs.pop().ok_or_else(|| anyhow::anyhow!("no hub"))?;
    let (clients, _) = login_range(cli, t, 1, contacts + 1, 50, 0).await?;
    hub.send(b"<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq><presence/>")
        .await?;
    // Provision: every contact subscribes to the hub; the hub approves each, one after the
    // other, so the last contact waits for all approvals (Prosody rewrites the hub's whole
    // roster file for each: about 30 ms each at 500 contacts on a loaded machine).
    let provision_limit = Duration::from_secs(30) + Duration::from_millis(200) * contacts as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let hub_jid = hub_jid.clone();
        tasks.spawn(async move {
            c.send(b"<presence/>").await?;
            c.send(format!("<presence to='{hub_jid}' type='subscribe'/>").as_bytes())
                .await?;
            // The approval shows as `subscribed` (RFC 6121 §3.2.3) or, where a server only
            // pushes it to the roster (Prosody), as the hub's available presence.
            let hub_full = format!("{hub_jid}/");
            let what = format!("the approval of {}", c.jid);
            wait_for(&mut c, &what, provision_limit, |e| {
                e.name() == "presence"
                    && (e.attr("type") == Some("subscribed")
                        || (e.attr("type").is_none()
                            && e.attr("from").is_some_and(|f| f.starts_with(&hub_full))))
            })
            .await?;
            Ok::<_, anyhow::Error>(c)
        });
    }
    // A server may deliver a request twice (again with the hub's roster or presence): count
    // each contact once.
    let mut approved = std::collections::HashSet::new();
    while approved.len() < contacts {
        let what = format!("subscription requests ({} of {contacts})", approved.len());
        let e = wait_for(&mut hub, &what, ROUND_LIMIT, |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await?;
        if let Some(from) = e.attr("from") {
            let bare = from.split('/').next().unwrap_or(from).to_string();
            hub.send(format!("<presence to='{bare}' type='subscribed'/>").as_bytes())
                .await?;
            approved.insert(bare);
        }
    }
    let mut clients = Vec::new();
    while let Some(r) = tasks.join_next().await {
        clients.push(r??);
    }
    // Drain whatever provisioning left in the contacts' streams.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times = Vec::new();
    let mut cpu_total = 0.0;
    for round in 0..rounds {
        let status = format!("round-{round}-{}", rand::random::<u32>());
        let mut waits = tokio::task::JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(contacts);
        let hub_prefix = format!("{hub_jid}/");
        for mut c in clients.drain(..) {
            let status = status.clone();
            let hub_prefix = hub_prefix.clone();
            let ready = ready_tx.clone();
            waits.spawn(async move {
                let _ = ready.send(()).await;
                drop(ready);
                wait_for(&mut c, "the hub's presence", ROUND_LIMIT, |e| {
                    e.name() == "presence"
                        && e.attr("from").is_some_and(|f| f.starts_with(&hub_prefix))
                        && e.children()
                            .any(|s| s.name() == "status" && s.text() == status)
                })
                .await?;
                Ok::<_, anyhow::Error>((c, Instant::now()))
            });
        }
        drop(ready_tx);
        while ready_rx.recv().await.is_some() {}
        let before = cli.server_pid.map(ProcStats::read).transpose()?;
        let start = Instant::now();
        hub.send(format!("<presence><status>{status}</status></presence>").as_bytes())
            .await?;
        let mut last = start;
        while let Some(r) = waits.join_next().await {
            let (c, at) = r??;
            last = last.max(at);
            clients.push(c);
        }
        times.push(last - start);
        if let (Some(b), Some(a)) = (before, cli.server_pid.map(ProcStats::read).transpose()?) {
            cpu_total += a.cpu_secs - b.cpu_secs;
        }
    }
    times.sort();
    // Roster fetch of the hub's R-item roster.
    let mut fetch = Vec::new();
    for i in 0..20 {
        let id = format!("rf{i}");
        let start = Instant::now();
        hub.send(
            format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>").as_bytes(),
        )
        .await?;
        let r = wait_for(&mut hub, "the roster", ROUND_LIMIT, |e| {
            e.name() == "iq" && e.attr("id") == Some(id.as_str())
        })
        .await?;
        fetch.push(start.elapsed());
        let items = r
            .children()
            .next()
            .map(|q| q.children().count())
            .unwrap_or(0);
        if items < contacts {
            bail!("roster has {items} items, expected {contacts}");
        }
    }
    fetch.sort();
    println!(
        "fanout: contacts={contacts} rounds={rounds} all_received_p50_ms={} all_received_max_ms={} server_cpu_ms_per_round={} roster_fetch_p50_ms={} roster_fetch_p99_ms={}",
        ms(percentile(&times, 0.5)),
        ms(times.last().copied().unwrap_or_default()),
        if cli.server_pid.is_some() {
            format!("{:.1}", cpu_total * 1000.0 / rounds as f64)
        } else {
            "n/a".into()
        },
        ms(percentile(&fetch, 0.5)),
        ms(percentile(&fetch, 0.99)),
    );
    Ok(())
}

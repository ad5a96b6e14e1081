//! The upload workload (XEP-0363): one account asks the upload service for a slot for a file
//! of SIZE bytes, PUTs it over plain HTTP (streamed from a generator, never held whole), GETs
//! it back and compares digests. Reports PUT and GET throughput and the server's resident
//! memory before, during (sampled every 50 ms) and after, so "constant memory" is a number.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::{Client, Target};
use crate::proc_stats::ProcStats;

/// What the workload needs besides the target.
pub struct Options {
    /// Bytes to upload.
    pub size: u64,
    /// The upload service's JID.
    pub service: String,
}

/// Bytes of the repeated pattern the file is made of.
const PATTERN: usize = 1024 * 1024;

/// Deterministic, incompressible-looking content.
fn chunk(offset: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// `http://host:port/path` → (host:port, path).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!("the bench speaks plain HTTP only; set [http] external_url to http://…: {url}")
    })?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((authority.to_string(), path.to_string()))
}

/// Reads an HTTP/1.1 response head; returns (status, content-length).
async fn response_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, Option<u64>)> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut len = None;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok();
        }
    }
    Ok((status, len))
}

/// Samples the server's RSS until `stop` turns true; returns the largest.
fn sample_rss(
    pid: Option<u32>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<u64>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let h = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            if let Some(p) = pid
                && let Ok(s) = ProcStats::read(p)
            {
                peak = peak.max(s.rss_bytes);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = rx.changed() => return peak,
            }
        }
    });
    (tx, h)
}

/// Runs the workload as `user`.
pub async fn run(
    t: &Target,
    user: &str,
    password: &str,
    pid: Option<u32>,
    o: &Options,
) -> Result<()> {
    let mut c = Client::login(t, 0, user, password, "upload").await?;
    c.send(
        format!(
            "<iq type='get' id='slot' to='{}'><request xmlns='urn:xmpp:http:upload:0' filename='bench.bin' size='{}' content-type='application/octet-stream'/></iq>",
            o.service, o.size
        )
        .as_bytes(),
    )
    .await?;
    let slot = loop {
        let e = c.next().await?;
        if e.attr("id") == Some("slot") {
            break e;
        }
    };
    let s = slot
        .get_child("slot", "urn:xmpp:http:upload:0")
        .ok_or_else(|| anyhow!("no slot: {slot}"))?;
    let put = s
        .get_child("put", "urn:xmpp:http:upload:0")
        .ok_or_else(|| anyhow!("no put URL: {slot}"))?;
    let put_url = put.attr("url").unwrap_or_default().to_string();
    let get_url = s
        .get_child("get", "urn:xmpp:http:upload:0")
        .and_then(|g| g.attr("url"))
        .unwrap_or_default()
        .to_string();
    let mut headers = String::new();
    for h in put.children().filter(|h| h.name() == "header") {
        headers.push_str(&format!(
            "{}: {}\r\n",
            h.attr("name").unwrap_or_default(),
            h.text()
        ));
    }

    // The content: one random-looking MiB repeated, and its digest, made before the clock
    // starts (the tool must not be what limits the transfer).
    let pattern = chunk(0, PATTERN);
    let mut digest = sha2::Sha256::new();
    let mut n = 0u64;
    while n < o.size {
        let k = (o.size - n).min(PATTERN as u64) as usize;
        digest.update(&pattern[..k]);
        n += k as u64;
    }
    let sent_digest = digest.finalize();
    let before = pid.map(ProcStats::read).transpose()?;
    // PUT, streamed.
    let (authority, path) = split_url(&put_url)?;
    let (stop, sampler) = sample_rss(pid);
    let started = Instant::now();
    let mut tcp = TcpStream::connect(&authority)
        .await
        .context("connecting for PUT")?;
    tcp.write_all(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{headers}Connection: close\r\n\r\n",
            o.size
        )
        .as_bytes(),
    )
    .await?;
    let mut sent = 0u64;
    while sent < o.size {
        let n = (o.size - sent).min(PATTERN as u64) as usize;
        tcp.write_all(&pattern[..n]).await?;
        sent += n as u64;
    }
    let mut r = BufReader::new(tcp);
    let (status, _) = response_head(&mut r).await?;
    let put_time = started.elapsed();
    let _ = stop.send(true);
    let put_peak = sampler.await.unwrap_or(0);
    if !(200..300).contains(&status) {
        bail!("PUT answered {status}");
    }

    // GET, streamed.
    let (authority, path) = split_url(&get_url)?;
    let (stop, sampler) = sample_rss(pid);
    let started = Instant::now();
    let mut tcp = TcpStream::connect(&authority)
        .await
        .context("connecting for GET")?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut r = BufReader::new(tcp);
    let (status, len) = response_head(&mut r).await?;
    if status != 200 {
        bail!("GET answered {status}");
    }
    let mut digest = sha2::Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        got += n as u64;
    }
    let get_time = started.elapsed();
    let _ = stop.send(true);
    let get_peak = sampler.await.unwrap_or(0);
    let after = pid.map(ProcStats::read).transpose()?;
    if got != o.size || len != Some(o.size) || digest.finalize() != sent_digest {
        bail!("the file came back different: {got} of {} bytes", o.size);
    }
    let mib = o.size as f64 / (1024.0 * 1024.0);
    let kib = |b: Option<u64>| {
        b.map(|v| (v / 1024).to_string())
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "upload: bytes={} put_mib_per_s={:.1} get_mib_per_s={:.1} identical=yes server_rss_before_kib={} server_rss_peak_put_kib={} server_rss_peak_get_kib={} server_rss_after_kib={}",
        o.size,
        mib / put_time.as_secs_f64(),
        mib / get_time.as_secs_f64(),
        kib(before.map(|b| b.rss_bytes)),
        kib(pid.map(|_| put_peak)),
        kib(pid.map(|_| get_peak)),
        kib(after.map(|a| a.rss_bytes)),
    );
    Ok(())
}

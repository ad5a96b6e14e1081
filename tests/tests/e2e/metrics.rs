//! `/metrics` (docs/metrics.md): OpenMetrics text on `[metrics] listen`, never on the public
//! HTTP listener. Counters are process-global (tests may share a process): the assertions are
//! on increases between two scrapes, or lower bounds.
use canto_tests::*;

/// A scrape: the status line and headers, and the body.
async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let raw = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    (head.to_string(), body.to_string())
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

/// The sum of the samples whose series starts with `prefix`.
fn sum(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn at(body: &str, series: &str) -> f64 {
    value(body, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_and_move() {
    let dir = ScratchDir::new("metrics");
    let path = dir.path("canto.sqlite");
    let storage = canto_storage::Storage::open(&canto_storage::Backend::Sqlite { path })
        .await
        .unwrap_or_else(|e| panic!("sqlite: {e}"));
    let mut config = test_config();
    config.storage.backend = "sqlite".into();
    config.metrics.listen = "127.0.0.1:0".into();
    let s = TestServer::with_storage(config, storage).await;
    let maddr = s
        .running
        .metrics_addr
        .unwrap_or_else(|| panic!("[metrics] listen is set: something listens"));
    s.add_user("alice", "wonderland").await;
    s.add_user("bob", "builder").await;

    let (_, before) = scrape(maddr).await;

    let mut a = s.login("alice", "wonderland", "home").await;
    let mut b = s.login("bob", "builder", "phone").await;
    a.send("<message to='bob@localhost/phone' type='chat'><body>hi</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = s.connect().await;
    bad.open(HOST).await;
    bad.starttls()
        .await
        .unwrap_or_else(|e| panic!("starttls: {e:#}"));
    bad.open(HOST).await;
    assert!(bad.auth_plain("", "alice", "wrong").await.is_err());

    let (head, after) = scrape(maddr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    // OpenMetrics: `# EOF` ends it, no blank lines, counter families named without `_total`.
    assert_eq!(after.lines().last(), Some("# EOF"), "{after}");
    assert!(after.ends_with("# EOF\n"), "{after}");
    assert!(!after.lines().any(|l| l.trim().is_empty()), "{after}");
    for l in after.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = l.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        assert!(name.starts_with("canto_"), "{l}");
        if kind == "counter" {
            assert!(!name.ends_with("_total"), "{l}");
        }
    }
    assert!(
        after
            .lines()
            .any(|l| l == "# TYPE canto_stanzas_in counter"),
        "{after}"
    );

    let grew = |series: &str| at(&after, series) - at(&before, series);
    assert!(
        grew("canto_stanzas_in_total{kind=\"message\"}") >= 1.0,
        "{after}"
    );
    assert!(
        grew("canto_stanzas_out_total{kind=\"message\"}") >= 1.0,
        "{after}"
    );
    assert!(
        sum(&after, "canto_auth_failures_total{") - sum(&before, "canto_auth_failures_total{")
            >= 1.0,
        "{after}"
    );
    assert!(
        grew("canto_auth_failures_total{mechanism=\"PLAIN\"}") >= 1.0,
        "{after}"
    );
    assert!(at(&after, "canto_sessions") >= 2.0, "{after}");
    assert!(
        value(&after, "canto_sessions_hibernating").is_some(),
        "{after}"
    );
    assert!(
        at(&after, "canto_connections{kind=\"tcp\"}") >= 3.0,
        "{after}"
    );
    // The routing histogram: buckets, and the message counted.
    assert!(
        after
            .lines()
            .any(|l| l == "# TYPE canto_routing_duration_seconds histogram"),
        "{after}"
    );
    assert!(
        after.contains("canto_routing_duration_seconds_bucket{kind=\"message\",le=\"+Inf\"}"),
        "{after}"
    );
    assert!(
        grew("canto_routing_duration_seconds_count{kind=\"message\"}") >= 1.0,
        "{after}"
    );
    // Storage: SQLite operations timed (the logins read credentials).
    assert!(
        after
            .lines()
            .any(|l| l == "# TYPE canto_storage_duration_seconds histogram"),
        "{after}"
    );
    assert!(
        grew("canto_storage_duration_seconds_count{op=\"account_credentials\"}") >= 2.0,
        "{after}"
    );

    // Only GET /metrics.
    let other = http_raw(
        maddr,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");

    drop(bad);
    drop(a);
    drop(b);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_on_the_public_http_listener() {
    let mut config = test_config();
    config.metrics.listen = "127.0.0.1:0".into();
    let s = TestServer::with_config(config).await;
    let public = s.running.http_addrs[0];
    assert_ne!(Some(public), s.running.metrics_addr);
    let r = http_raw(
        public,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    let s = TestServer::start().await;
    assert!(s.running.metrics_addr.is_none());
    s.stop().await;
}

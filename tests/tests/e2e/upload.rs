//! HTTP File Upload (XEP-0363) end to end: the service upload.localhost (disco, slots, the
//! §4.2 errors, quota, who may upload) and the HTTP side at /upload/ (PUT checks, GET / HEAD,
//! ranges, caching, security headers), expiry and account deletion. HTTP is spoken by hand over
//! a TcpStream, one request per connection.
use std::net::SocketAddr;
use std::time::Duration;

use canto_tests::*;
use canto_xml::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "urn:xmpp:http:upload:0";

/// A test server whose upload links point at its plain HTTP listener; `upload` is the
/// `[upload]` section's TOML.
async fn server(upload: &str) -> (TestServer, SocketAddr) {
    let mut c = test_config();
    let http = free_addr();
    c.http.listen = vec![http.to_string()];
    c.http.external_url = format!("http://{http}");
    let table: toml::Table = upload.parse().unwrap_or_else(|e| panic!("{e}"));
    c.sections
        .insert("upload".into(), toml::Value::Table(table));
    let s = TestServer::with_config(c).await;
    s.add_user("alice", "alicepw").await;
    s.add_user("bob", "bobpw").await;
    s.add_user_on(HOST2, "carol", "carolpw").await;
    (s, http)
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a connection of its own (`Connection: close`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    // The server may answer before the body (a refused PUT); a reset then is no failure.
    let _ = tcp.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut raw)).await;
    parse(&raw, method == "HEAD")
}

fn parse(raw: &[u8], head: bool) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {text}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..nl])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

/// A slot: (PUT path, Authorization value, GET path).
struct SlotUrls {
    put: String,
    auth: String,
    get: String,
}

fn path_of(url: &str, http: SocketAddr) -> String {
    url.strip_prefix(&format!("http://{http}"))
        .unwrap_or_else(|| panic!("{url} is not under http://{http}"))
        .to_string()
}

async fn request(c: &mut Client, attrs: &str) -> Element {
    c.iq(&format!(
        "<iq type='get' id='{{id}}' to='upload.localhost'><request xmlns='{NS}' {attrs}/></iq>"
    ))
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn slot(c: &mut Client, http: SocketAddr, attrs: &str) -> SlotUrls {
    let r = request(c, attrs).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let slot = r
        .get_child("slot", NS)
        .unwrap_or_else(|| panic!("no slot in {r:?}"));
    let put = slot.get_child("put", NS).unwrap_or_else(|| panic!("{r:?}"));
    let header = put
        .get_child("header", NS)
        .unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(header.attr("name"), Some("Authorization"));
    let get = slot.get_child("get", NS).unwrap_or_else(|| panic!("{r:?}"));
    SlotUrls {
        put: path_of(put.attr("url").unwrap_or_default(), http),
        auth: header.text(),
        get: path_of(get.attr("url").unwrap_or_default(), http),
    }
}

async fn put(http_addr: SocketAddr, s: &SlotUrls, ct: &str, body: &[u8]) -> Reply {
    let len = body.len().to_string();
    http(
        http_addr,
        "PUT",
        &s.put,
        &[
            ("Authorization", &s.auth),
            ("Content-Type", ct),
            ("Content-Length", &len),
        ],
        body,
    )
    .await
}

fn upload_error(r: &Element) -> (Option<String>, Option<String>) {
    (
        error_condition(r),
        r.get_child("error", canto_stanza::ns::CLIENT)
            .and_then(|e| e.attr("type"))
            .map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_service_is_discovered_with_its_max_file_size() {
    let (s, _) = server("max_file_size = 5000").await;
    let mut a = s.login("alice", "alicepw", "r").await;
    let items = a
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let listed = items
        .children()
        .flat_map(|q| q.children())
        .any(|i| i.attr("jid") == Some("upload.localhost"));
    assert!(listed, "{items:?}");
    let info = a
        .iq("<iq type='get' id='{id}' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap_or_else(|| panic!("{info:?}"));
    assert!(
        q.children().any(|c| c.name() == "identity"
            && c.attr("category") == Some("store")
            && c.attr("type") == Some("file")),
        "{info:?}"
    );
    assert!(
        q.children()
            .any(|c| c.name() == "feature" && c.attr("var") == Some(NS)),
        "{info:?}"
    );
    // XEP-0363 §2: the XEP-0128 form with max-file-size.
    let form = q
        .get_child("x", "jabber:x:data")
        .unwrap_or_else(|| panic!("{info:?}"));
    let field = |var: &str| {
        form.children()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.children().next())
            .map(|v| v.text())
    };
    assert_eq!(field("FORM_TYPE").as_deref(), Some(NS));
    assert_eq!(field("max-file-size").as_deref(), Some("5000"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_put_then_get_head_ranges_caching_and_headers() {
    let (s, h) = server("").await;
    let mut a = s.login("alice", "alicepw", "r").await;
    // Large enough to arrive in several chunks.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sl = slot(
        &mut a,
        h,
        &format!(
            "filename='my photo é.png' size='{}' content-type='image/png'",
            data.len()
        ),
    )
    .await;
    assert_eq!(sl.put, sl.get);
    assert!(sl.get.ends_with("/my%20photo%20%C3%A9.png"), "{}", sl.get);
    let r = put(h, &sl, "image/png", &data).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // GET: byte-identical, with its type, disposition, validators and security headers.
    let r = http(h, "GET", &sl.get, &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "{} bytes back", r.body.len());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"my photo _.png\"; filename*=UTF-8''my%20photo%20%C3%A9.png")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    let cache = r.header("cache-control").unwrap_or_default();
    assert!(
        cache.contains("public") && cache.contains("immutable") && cache.contains("max-age=604800"),
        "{cache}"
    );
    assert!(
        r.header("last-modified")
            .is_some_and(|v| v.ends_with("GMT"))
    );
    let etag = r.header("etag").unwrap_or_default().to_string();
    assert!(etag.starts_with('"'), "{etag}");
    // HEAD: the headers, no body.
    let r = http(h, "HEAD", &sl.get, &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body.is_empty());
    // Ranges (RFC 9110 §14): a-b, a-, -n; unsatisfiable.
    let r = http(h, "GET", &sl.get, &[("Range", "bytes=10-19")], b"").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/300000"));
    let r = http(h, "GET", &sl.get, &[("Range", "bytes=299990-")], b"").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[299_990..]);
    let r = http(h, "GET", &sl.get, &[("Range", "bytes=-5")], b"").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[299_995..]);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 299995-299999/300000")
    );
    let r = http(h, "GET", &sl.get, &[("Range", "bytes=300000-")], b"").await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    // If-None-Match → 304.
    let r = http(h, "GET", &sl.get, &[("If-None-Match", &etag)], b"").await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    // Another name or an unknown id: 404.
    let other = sl.get.replace("my%20photo%20%C3%A9.png", "other.png");
    assert_eq!(http(h, "GET", &other, &[], b"").await.status, 404);
    let unknown = format!("/upload/{}/x.png", "0".repeat(32));
    assert_eq!(http(h, "GET", &unknown, &[], b"").await.status, 404);
    assert_eq!(
        http(h, "GET", "/upload/../x.png", &[], b"").await.status,
        404
    );
    // A slot is used once: 409.
    let r = put(h, &sl, "image/png", &data).await;
    assert_eq!(r.status, 409);
    // Other methods: 405.
    assert_eq!(http(h, "DELETE", &sl.get, &[], b"").await.status, 405);
    // A file whose type may carry script is an attachment.
    let sl = slot(
        &mut a,
        h,
        "filename='x.html' size='5' content-type='text/html'",
    )
    .await;
    assert_eq!(put(h, &sl, "text/html", b"<b>x").await.status, 400);
    assert_eq!(put(h, &sl, "text/html", b"<b>x<").await.status, 201);
    let r = http(h, "GET", &sl.get, &[], b"").await;
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.starts_with("attachment;")),
        "{:?}",
        r.headers
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_put_refused_without_valid_signature_size_type_or_in_time() {
    let (s, h) = server("slot_lifetime = 1\nmax_concurrent_uploads = 1").await;
    let mut a = s.login("alice", "alicepw", "r").await;
    let sl = slot(
        &mut a,
        h,
        "filename='a.txt' size='5' content-type='text/plain'",
    )
    .await;
    // No token, another scheme, a tampered signature, a token for another slot: 403.
    let no_auth = http(
        h,
        "PUT",
        &sl.put,
        &[("Content-Type", "text/plain"), ("Content-Length", "5")],
        b"hello",
    )
    .await;
    assert_eq!(no_auth.status, 403);
    let mut tampered = sl.auth.clone();
    let last = tampered.pop().unwrap_or('A');
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for auth in [tampered.as_str(), "Basic YTpi", "Bearer nonsense"] {
        let r = http(
            h,
            "PUT",
            &sl.put,
            &[
                ("Authorization", auth),
                ("Content-Type", "text/plain"),
                ("Content-Length", "5"),
            ],
            b"hello",
        )
        .await;
        assert_eq!(r.status, 403, "{auth}");
    }
    let sl2 = slot(
        &mut a,
        h,
        "filename='b.txt' size='5' content-type='text/plain'",
    )
    .await;
    let crossed = SlotUrls {
        put: sl.put.clone(),
        auth: sl2.auth.clone(),
        get: sl.get.clone(),
    };
    assert_eq!(put(h, &crossed, "text/plain", b"hello").await.status, 403);
    // Sizes: smaller 400, larger 413; the type as signed, else 400.
    assert_eq!(put(h, &sl, "text/plain", b"hell").await.status, 400);
    assert_eq!(put(h, &sl, "text/plain", b"hello!").await.status, 413);
    assert_eq!(put(h, &sl, "text/html", b"hello").await.status, 400);
    // Nothing was stored by the refused attempts.
    assert_eq!(http(h, "GET", &sl.get, &[], b"").await.status, 404);
    // Concurrent PUTs are counted: one is slowly sending, the next gets 503.
    let mut slow = tokio::net::TcpStream::connect(h)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    slow.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nContent-Type: text/plain\r\n\
             Content-Length: 5\r\n\r\nhe",
            sl2.put, sl2.auth
        )
        .as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = put(h, &sl, "text/plain", b"hello").await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after"), Some("10"));
    slow.write_all(b"llo")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_buf(&mut raw)).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    drop(slow);
    // The slot as signed still works in time; after slot_lifetime (1 s) it is 403.
    assert_eq!(put(h, &sl, "text/plain", b"hello").await.status, 201);
    let late = slot(&mut a, h, "filename='c.txt' size='5'").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(put(h, &late, "text/plain", b"hello").await.status, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slot_requests_refused_by_size_name_type_quota_and_origin() {
    let (s, h) =
        server("max_file_size = 1000\nquota = 1500\nallowed_types = [\"image/*\", \"text/plain\"]")
            .await;
    let mut a = s.login("alice", "alicepw", "r").await;
    // XEP-0363 §4.2: too large, with the maximum.
    let r = request(
        &mut a,
        "filename='big.png' size='1001' content-type='image/png'",
    )
    .await;
    assert_eq!(
        upload_error(&r),
        (Some("not-acceptable".into()), Some("modify".into()))
    );
    let max = r
        .get_child("error", canto_stanza::ns::CLIENT)
        .and_then(|e| e.get_child("file-too-large", NS))
        .and_then(|f| f.get_child("max-file-size", NS))
        .map(|m| m.text());
    assert_eq!(max.as_deref(), Some("1000"), "{r:?}");
    // Bad names and sizes: bad-request.
    for attrs in [
        "filename='' size='10'",
        "size='10'",
        "filename='a/b.png' size='10'",
        "filename='..' size='10'",
        "filename='a&#x9;b' size='10'",
        "filename='ok.png' size='0'",
        "filename='ok.png' size='ten'",
        "filename='ok.png' size='-1'",
        "filename='ok.png'",
        "filename='ok.png' size='10' content-type='not a type'",
    ] {
        let r = request(&mut a, attrs).await;
        assert_eq!(
            upload_error(&r),
            (Some("bad-request".into()), Some("modify".into())),
            "{attrs}"
        );
    }
    let long = "x".repeat(256);
    let r = request(&mut a, &format!("filename='{long}' size='10'")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // A type not in allowed_types.
    let r = request(
        &mut a,
        "filename='a.html' size='10' content-type='text/html'",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    // Quota: outstanding slots count; beyond, resource-constraint (wait) with a text.
    let first = slot(
        &mut a,
        h,
        "filename='a.png' size='1000' content-type='image/png'",
    )
    .await;
    let r = request(
        &mut a,
        "filename='b.png' size='600' content-type='image/png'",
    )
    .await;
    assert_eq!(
        upload_error(&r),
        (Some("resource-constraint".into()), Some("wait".into()))
    );
    assert!(
        r.get_child("error", canto_stanza::ns::CLIENT)
            .and_then(|e| e.get_child("text", canto_stanza::ns::STANZAS))
            .is_some_and(|t| t.text().contains("Quota")),
        "{r:?}"
    );
    // Stored files count as well; another user has a quota of its own.
    assert_eq!(put(h, &first, "image/png", &[7u8; 1000]).await.status, 201);
    let r = request(
        &mut a,
        "filename='c.png' size='501' content-type='image/png'",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("resource-constraint"));
    let _ = slot(
        &mut a,
        h,
        "filename='c.png' size='500' content-type='image/png'",
    )
    .await;
    let mut b = s.login("bob", "bobpw", "r").await;
    let _ = slot(
        &mut b,
        h,
        "filename='b.png' size='1000' content-type='image/png'",
    )
    .await;
    // Another host's user: forbidden (auth).
    let mut c = s.login_on(HOST2, "carol", "carolpw", "r").await;
    let r = request(
        &mut c,
        "filename='a.png' size='10' content-type='image/png'",
    )
    .await;
    assert_eq!(
        upload_error(&r),
        (Some("forbidden".into()), Some("auth".into()))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_files_expire_and_free_the_quota() {
    // expire_after = 3 s: the timer runs every second.
    let (s, h) = server("expire_after = 3\nquota = 100").await;
    let mut a = s.login("alice", "alicepw", "r").await;
    let sl = slot(
        &mut a,
        h,
        "filename='a.txt' size='100' content-type='text/plain'",
    )
    .await;
    assert_eq!(put(h, &sl, "text/plain", &[b'x'; 100]).await.status, 201);
    let stored = std::time::Instant::now();
    let id = sl.get.split('/').nth(2).unwrap_or_default().to_string();
    let dir = s.dir.join("upload").join(&id);
    assert!(dir.join("data").exists() && dir.join("meta").exists());
    let r = request(&mut a, "filename='b.txt' size='1'").await;
    assert_eq!(error_condition(&r).as_deref(), Some("resource-constraint"));
    let mut gone = None;
    for _ in 0..150 {
        if http(h, "GET", &sl.get, &[], b"").await.status == 404 {
            gone = Some(stored.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = gone.unwrap_or_else(|| panic!("the file did not expire"));
    // Not before its time (the age is counted in whole seconds).
    assert!(after >= Duration::from_secs(2), "{after:?}");
    assert!(!dir.exists());
    // Its record went with it: the quota is free again.
    let _ = slot(&mut a, h, "filename='b.txt' size='100'").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_account_deletion_removes_the_users_files() {
    let (s, h) = server("").await;
    let mut a = s.login("alice", "alicepw", "r").await;
    let mut b = s.login("bob", "bobpw", "r").await;
    let sa = slot(&mut a, h, "filename='a.txt' size='3'").await;
    let sb = slot(&mut b, h, "filename='b.txt' size='3'").await;
    assert_eq!(
        put(h, &sa, "application/octet-stream", b"abc").await.status,
        201
    );
    assert_eq!(
        put(h, &sb, "application/octet-stream", b"def").await.status,
        201
    );
    let r = http(h, "GET", &sa.get, &[], b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let alice = canto_stanza::BareJid::new("alice@localhost").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.running
            .server
            .delete_account(&alice)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(http(h, "GET", &sa.get, &[], b"").await.status, 404);
    let id = sa.get.split('/').nth(2).unwrap_or_default().to_string();
    assert!(!s.dir.join("upload").join(id).exists());
    // Bob's file stays.
    assert_eq!(http(h, "GET", &sb.get, &[], b"").await.status, 200);
    s.stop().await;
}

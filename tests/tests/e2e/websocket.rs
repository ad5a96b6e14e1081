//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`, and the HTTP server it runs on
//! (`[http]`: limits, slow requests, trusted proxies, CORS, XEP-0156 host-meta). Clients:
//! tokio-tungstenite (tests/src/ws.rs) and raw HTTP.

use std::time::Duration;

use canto_tests::ws::{FRAMING, WsClient, parse_message};
use canto_tests::*;

/// A server whose plain HTTP listener offers SASL (encryption not required), as behind a
/// TLS-terminating proxy on loopback.
async fn plain_server(tweak: impl FnOnce(&mut canto_core::Config)) -> TestServer {
    let mut c = test_config();
    c.c2s.require_encryption = false;
    tweak(&mut c);
    let s = TestServer::with_config(c).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    s
}

fn http_addr(s: &TestServer) -> std::net::SocketAddr {
    s.running.http_addrs[0]
}

#[tokio::test]
async fn a_websocket_session_logs_in_and_exchanges_messages_with_a_tcp_client() {
    let s = plain_server(|_| {}).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // RFC 7395 §3.1: the server selects the xmpp subprotocol.
    assert_eq!(ws.protocol.as_deref(), Some("xmpp"));
    let open = ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    // §3.3.2: the server's <open/> names itself, the stream id and version 1.0.
    assert_eq!(open.attr("from"), Some(HOST));
    assert_eq!(open.attr("version"), Some("1.0"));
    assert!(open.attr("id").is_some_and(|i| !i.is_empty()));
    assert!(
        ws.mechanisms().iter().any(|m| m == "PLAIN"),
        "{:?}",
        ws.mechanisms()
    );
    ws.auth_plain("alice", "pw")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The restart is a new <open/> (§3.3.2; RFC 6120 §6.4.6).
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    let jid = ws.bind("web").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(jid, format!("alice@{HOST}/web"));
    ws.send("<presence/>").await;

    let mut bob = s.login("bob", "pw", "tcp").await;
    bob.send(&format!(
        "<message to='alice@{HOST}/web' type='chat' id='m1'><body>to the browser &lt;3</body></message>"
    ))
    .await;
    let m = ws
        .wait_for(|e| e.is("message", canto_stanza::ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        m.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text()),
        Some("to the browser <3".into())
    );
    assert_eq!(m.attr("from"), Some(format!("bob@{HOST}/tcp").as_str()));

    // A stanza without xmlns is jabber:client (the stream's content namespace).
    ws.send(&format!(
        "<message xmlns='jabber:client' to='bob@{HOST}/tcp' type='chat'><body>from the browser</body></message>"
    ))
    .await;
    let m = bob
        .wait_for(|e| e.is("message", canto_stanza::ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        m.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text()),
        Some("from the browser".into())
    );
    assert_eq!(m.attr("from"), Some(jid.as_str()));

    // §3.6: <close/> is answered with <close/>, then the WebSocket closes, and the session is
    // gone like any other (its contacts would see it unavailable).
    ws.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    let c = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(c.is("close", FRAMING), "{c}");
    assert!(ws.next_text().await.is_err());
    let server = s.running.server.clone();
    assert!(
        poll_until(WAIT, || server.sessions.get(&full_jid(&jid)).is_none()).await,
        "the session outlived its WebSocket"
    );
}

#[tokio::test]
async fn every_message_is_one_self_contained_element() {
    let s = plain_server(|_| {}).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.login("alice", "pw", "r")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Several answers produced at once (roster, disco, presence echo) still arrive one per
    // message, each parseable on its own (`next` parses each message as its own document).
    ws.send(
        "<iq xmlns='jabber:client' type='get' id='a'><query xmlns='jabber:iq:roster'/></iq>\
         ",
    )
    .await;
    ws.send("<iq xmlns='jabber:client' type='get' id='b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    ws.send("<presence/>").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let text = ws.next_text().await.unwrap_or_else(|e| panic!("{e:#}"));
        let e = parse_message(&text).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            text.starts_with(&format!("<{} xmlns='jabber:client'", e.name())),
            "{text}"
        );
        ids.push(
            e.attr("id")
                .map(str::to_string)
                .unwrap_or_else(|| e.name().to_string()),
        );
    }
    assert_eq!(ids, vec!["a", "b", "presence"]);
    // Stream-level elements declare their own namespace (the stream prefix included).
    let mut ws2 = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws2.send(&format!(
        "<open xmlns='{FRAMING}' to='{HOST}' version='1.0'/>"
    ))
    .await;
    let _open = ws2.next_text().await.unwrap_or_else(|e| panic!("{e:#}"));
    let features = ws2.next_text().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        features.starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'"),
        "{features}"
    );
}

#[tokio::test]
async fn an_upgrade_without_the_xmpp_subprotocol_or_without_websocket_is_refused() {
    let s = plain_server(|_| {}).await;
    // RFC 7395 §3.1: no xmpp subprotocol offered.
    let r = WsClient::connect_with(http_addr(&s), None, Some("chat"), &[]).await;
    assert!(r.is_err(), "an upgrade without `xmpp` was accepted");
    let r = http_raw(
        http_addr(&s),
        "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("xmpp"), "{r}");
    // A plain GET gets 426 and says what the endpoint is.
    let r = http_raw(
        http_addr(&s),
        "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
}

#[tokio::test]
async fn wss_offers_channel_binding_and_plain_ws_offers_no_sasl_when_encryption_is_required() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    // Plain ws:// on a server requiring encryption: no mechanism is offered (RFC 6120 §13.8),
    // exactly as on an unencrypted TCP stream; STARTTLS is never offered on a WebSocket
    // (RFC 7395 §3.7).
    let mut ws = WsClient::connect(s.running.http_addrs[0], None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ws.mechanisms().is_empty(), "{:?}", ws.mechanisms());
    let f = ws.features.clone().unwrap_or_else(|| panic!("features"));
    assert!(
        f.get_child("starttls", canto_stanza::ns::TLS).is_none(),
        "{f}"
    );
    // wss:// is encrypted: SASL is offered, with the -PLUS variants (channel binding to the
    // HTTPS connection's TLS).
    let cert = s.cert_pem_path();
    let mut wss = WsClient::connect(s.running.https_addrs[0], Some(&cert), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wss.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    let mechs = wss.mechanisms();
    assert!(mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS"), "{mechs:?}");
    wss.auth_plain("alice", "pw")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wss.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    wss.bind("secure").await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn bad_framing_gets_the_stream_error_rfc_7395_asks_for() {
    let s = plain_server(|c| c.http.websocket_max_message = 300_000).await;
    // A message holding half an element: not-well-formed (§3.3.3), sent as <stream:error>
    // followed by <close/> (§3.6.1), after our <open/> (RFC 6120 §4.9.1.2).
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    ws.send("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/>")
        .await;
    let e = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.is("error", canto_stanza::ns::STREAMS), "{e}");
    assert!(
        e.has_child("not-well-formed", canto_stanza::ns::STREAM_ERRORS),
        "{e}"
    );
    let c = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(c.is("close", FRAMING), "{c}");

    // An <open/> to a host we do not serve: our <open/> first, then host-unknown.
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.send(&format!(
        "<open xmlns='{FRAMING}' to='nowhere.example' version='1.0'/>"
    ))
    .await;
    let o = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(o.is("open", FRAMING), "{o}");
    let e = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        e.has_child("host-unknown", canto_stanza::ns::STREAM_ERRORS),
        "{e}"
    );

    // A binary message is not XMPP (§3.2).
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    use futures_util::SinkExt;
    let _ = ws
        .ws
        .send(tokio_tungstenite::tungstenite::Message::binary(
            b"<presence/>".to_vec(),
        ))
        .await;
    let e = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        e.has_child("unsupported-encoding", canto_stanza::ns::STREAM_ERRORS),
        "{e}"
    );

    // A message over the stanza limit before authentication (10 kB): policy-violation.
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    let big = format!("<message><body>{}</body></message>", "x".repeat(20_000));
    ws.send(&big).await;
    let e = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        e.has_child("policy-violation", canto_stanza::ns::STREAM_ERRORS),
        "{e}"
    );

    // A WebSocket message beyond http.websocket_max_message is refused by the WebSocket layer.
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    ws.send(&"y".repeat(400_000)).await;
    let mut ended = false;
    for _ in 0..3 {
        match ws.next().await {
            Ok(e) if e.is("close", FRAMING) => {
                ended = true;
                break;
            }
            Ok(e) => assert!(e.is("error", canto_stanza::ns::STREAMS), "{e}"),
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "an oversized message did not end the connection");
    // None of this harmed another user.
    let mut a = s.login("alice", "pw", "a").await;
    let mut b = s.login("bob", "pw", "b").await;
    assert_message_flows(&mut a, &mut b).await;
}

#[tokio::test]
async fn see_other_uri_redirects_every_websocket_client() {
    let s =
        plain_server(|c| c.http.websocket_redirect = "wss://other.example/xmpp-websocket".into())
            .await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.send(&format!(
        "<open xmlns='{FRAMING}' to='{HOST}' version='1.0'/>"
    ))
    .await;
    // RFC 7395 §3.6.2: <close see-other-uri/> instead of a stream.
    let c = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(c.is("close", FRAMING), "{c}");
    assert_eq!(
        c.attr("see-other-uri"),
        Some("wss://other.example/xmpp-websocket")
    );
    assert!(ws.next_text().await.is_err());
}

#[tokio::test]
async fn stream_management_resumes_on_a_new_websocket() {
    let s = plain_server(|_| {}).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.login("alice", "pw", "phone")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(enabled.is("enabled", "urn:xmpp:sm:3"), "{enabled}");
    let id = enabled.attr("id").unwrap_or_default().to_string();
    ws.send("<presence/>").await;
    let _ = ws
        .wait_for(|e| e.is("presence", canto_stanza::ns::CLIENT))
        .await;
    // The WebSocket drops without <close/> (a train enters a tunnel).
    drop(ws);
    let mut bob = s.login("bob", "pw", "b").await;
    bob.send(&format!(
        "<message to='alice@{HOST}/phone' type='chat'><body>while you were away</body></message>"
    ))
    .await;
    bob.sync().await;
    // XEP-0198 §5 over a new WebSocket: the same session, the message replayed.
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    ws.auth_plain("alice", "pw")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    ws.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let r = ws.next().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.is("resumed", "urn:xmpp:sm:3"), "{r}");
    let m = ws
        .wait_for(|e| e.is("message", canto_stanza::ns::CLIENT))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        m.get_child("body", canto_stanza::ns::CLIENT)
            .map(|b| b.text()),
        Some("while you were away".into())
    );
}

#[tokio::test]
async fn a_websocket_ping_is_answered() {
    let s = plain_server(|_| {}).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let _ = ws
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let got = tokio::time::timeout(WAIT, ws.ws.next()).await;
    match got {
        Ok(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test]
async fn per_address_limits_see_the_client_behind_a_trusted_proxy() {
    let s = plain_server(|c| {
        c.limits.max_connections_per_ip = 1;
        // Loopback is exempt by default (load tools); not here.
        c.limits.connection_limit_exempt = Vec::new();
    })
    .await;
    // Loopback is a trusted proxy by default (Prosody's trusted_proxies): the addresses it
    // forwards for are counted, one connection each.
    let a1 = WsClient::connect(http_addr(&s), None, &[("X-Forwarded-For", "203.0.113.1")]).await;
    assert!(a1.is_ok());
    let a2 = WsClient::connect(http_addr(&s), None, &[("X-Forwarded-For", "203.0.113.1")]).await;
    assert!(
        a2.is_err(),
        "a second connection from 203.0.113.1 was accepted"
    );
    let b1 = WsClient::connect(http_addr(&s), None, &[("Forwarded", "for=203.0.113.2")]).await;
    assert!(b1.is_ok(), "another client behind the proxy was refused");
    drop(a1);
    // The slot comes back when the session ends.
    let mut ok = false;
    for _ in 0..50 {
        if WsClient::connect(http_addr(&s), None, &[("X-Forwarded-For", "203.0.113.1")])
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the slot of a closed WebSocket was not given back");
}

#[tokio::test]
async fn host_meta_lists_both_endpoints_in_xrd_and_json() {
    let s = plain_server(|_| {}).await;
    let port = http_addr(&s).port();
    let r = http_raw(
        http_addr(&s),
        &format!("GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("application/xrd+xml"), "{r}");
    // XEP-0156 §3.3 link relations; the scheme follows the connection (plain: ws/http).
    assert!(
        r.contains(&format!(
            "rel='urn:xmpp:alt-connections:websocket' href='ws://localhost:{port}/xmpp-websocket'"
        )),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "rel='urn:xmpp:alt-connections:xbosh' href='http://localhost:{port}/http-bind'"
        )),
        "{r}"
    );
    let r = http_raw(
        http_addr(&s),
        &format!("GET /.well-known/host-meta.json HTTP/1.1\r\nHost: localhost:{port}\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("application/json"), "{r}");
    // Behind the (trusted, loopback) proxy that terminated TLS: wss and https.
    assert!(
        r.contains(&format!(
            "\"href\":\"wss://localhost:{port}/xmpp-websocket\""
        )),
        "{r}"
    );
    assert!(
        r.contains(&format!("\"href\":\"https://localhost:{port}/http-bind\"")),
        "{r}"
    );
    // A configured external URL wins.
    let s2 = plain_server(|c| c.http.external_url = "https://chat.example.org".into()).await;
    let r = http_raw(
        http_addr(&s2),
        "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: whatever\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.contains("\"href\":\"wss://chat.example.org/xmpp-websocket\""),
        "{r}"
    );
}

#[tokio::test]
async fn cors_preflight_and_allowed_origins() {
    let s = plain_server(|c| c.http.cors_origins = vec!["https://web.example".into()]).await;
    let r = http_raw(
        http_addr(&s),
        "OPTIONS /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: https://web.example\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: https://web.example"),
        "{r}"
    );
    assert!(lower.contains("access-control-allow-methods:"), "{r}");
    // Another origin gets no allow header (the browser then refuses the call).
    let r = http_raw(
        http_addr(&s),
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !r.to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{r}"
    );
}

#[tokio::test]
async fn slow_or_oversized_requests_are_cut_off_without_harming_others() {
    let s = plain_server(|c| c.http.header_timeout = 1).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Slowloris: a header trickled byte by byte is cut off after header_timeout.
    let mut slow = tokio::net::TcpStream::connect(http_addr(&s))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let _ = slow
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await;
    let mut closed = false;
    for _ in 0..40 {
        if slow.write_all(b"X-A: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled request was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A connection that never sends a request is closed too.
    let mut idle = tokio::net::TcpStream::connect(http_addr(&s))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "an idle connection stayed open"
    );
    // Headers beyond max_header_bytes: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = http_raw(http_addr(&s), &big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    // Meanwhile a WebSocket session works.
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.login("alice", "pw", "w")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pong = ws
        .iq("<iq xmlns='jabber:client' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pong.attr("type"), Some("result"));
    // Unknown paths: 404.
    let r = http_raw(
        http_addr(&s),
        "GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test]
async fn websocket_connections_count_against_http_max_connections_while_they_live() {
    let s = plain_server(|c| c.http.max_connections = 1).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.open(HOST).await.unwrap_or_else(|e| panic!("{e:#}"));
    // The upgrade's HTTP exchange is over, but the connection is still open: it counts.
    let r = http_raw(
        http_addr(&s),
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.is_empty(),
        "a connection beyond http.max_connections was served: {r}"
    );
    drop(ws);
    let mut served = false;
    for _ in 0..50 {
        let r = http_raw(
            http_addr(&s),
            "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the closed WebSocket's connection was not given back"
    );
}

#[tokio::test]
async fn client_state_indication_holds_presence_on_a_websocket_too() {
    // XEP-0352 is the engine's: over a WebSocket an inactive client's presence updates wait
    // until it is active again, while messages with a body arrive at once.
    const CSI: &str = "urn:xmpp:csi:0";
    let s = plain_server(|_| {}).await;
    let mut ws = WsClient::connect(http_addr(&s), None, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.login("alice", "pw", "web")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let f = ws.features.clone().unwrap_or_else(|| panic!("features"));
    assert!(f.has_child("csi", CSI), "{f}");
    // alice subscribes to bob, so his presence reaches her.
    let mut bob = s.login("bob", "pw", "b").await;
    let mut alice_tcp = s.login("alice", "pw", "tcp").await;
    bob.send("<presence/>").await;
    alice_tcp.send("<presence/>").await;
    assert_alive(&mut bob).await;
    assert_alive(&mut alice_tcp).await;
    subscribe_to(&mut alice_tcp, &mut bob).await;
    // Initial presence: the server probes bob for alice's new resource.
    ws.send("<presence/>").await;
    let _ = ws
        .wait_for(|e| {
            e.is("presence", canto_stanza::ns::CLIENT)
                && e.attr("from").is_some_and(|f| f.starts_with("bob@"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    ws.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    let pong = ws
        .iq("<iq xmlns='jabber:client' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pong.attr("type"), Some("result"));
    bob.send("<presence><show>away</show></presence>").await;
    bob.sync().await;
    assert!(
        ws.nothing_within(Duration::from_millis(300)).await,
        "presence leaked while inactive"
    );
    bob.send(&format!(
        "<message to='alice@{HOST}/web' type='chat'><body>urgent</body></message>"
    ))
    .await;
    // The message goes out at once, and the held presence with it (XEP-0352 §5: a stanza
    // that must be delivered flushes what was held before it, in order).
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|e: &canto_xml::Element| e.is("message", canto_stanza::ns::CLIENT))
    {
        got.push(ws.next().await.unwrap_or_else(|e| panic!("{e:#}")));
    }
    assert!(
        got.iter()
            .any(|e| e.is("presence", canto_stanza::ns::CLIENT)
                && e.has_child("show", canto_stanza::ns::CLIENT)),
        "{got:?}"
    );
}

//! A WebSocket XMPP test client (RFC 7395) on tokio-tungstenite, a WebSocket library nobody
//! here wrote: one element per text message, `<open/>`/`<close/>` framing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use canto_xml::{Element, Limits, StreamEvent, StreamParser};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{HOST, WAIT};

/// The framing namespace (RFC 7395 §3.3.1).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// A byte stream a WebSocket runs over: TCP or TLS.
pub trait WsIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> WsIo for T {}

/// One WebSocket XMPP connection.
pub struct WsClient {
    /// The WebSocket.
    pub ws: WebSocketStream<Box<dyn WsIo>>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// The last features received.
    pub features: Option<Element>,
    /// The bound JID.
    pub jid: Option<String>,
    ids: u32,
}

/// Parses one message as a document of its own, with no namespace context: whatever the
/// element relies on must be declared in it (RFC 7395 §3.3.3).
pub fn parse_message(text: &str) -> Result<Element> {
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: 1 << 24,
        ..Limits::AUTHENTICATED
    });
    let mut out = Vec::new();
    let doc = format!("<doc xmlns='urn:canto:test:none'>{text}");
    p.feed(doc.as_bytes(), &mut out)
        .map_err(|e| anyhow!("bad XML in message {text:?}: {e}"))?;
    match out.as_slice() {
        [StreamEvent::Header(_), StreamEvent::Stanza(e)] => Ok(e.clone()),
        _ => bail!("message is not exactly one complete element: {text:?}"),
    }
}

impl WsClient {
    /// Connects to `ws://addr/xmpp-websocket` (or `wss://` with `ca` trusted) offering
    /// the `xmpp` subprotocol; `headers` are added to the upgrade request.
    pub async fn connect(
        addr: SocketAddr,
        ca: Option<&Path>,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient> {
        Self::connect_with(addr, ca, Some("xmpp"), headers).await
    }

    /// [`WsClient::connect`] with a chosen subprotocol offer (None: no offer).
    pub async fn connect_with(
        addr: SocketAddr,
        ca: Option<&Path>,
        protocol: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let (io, scheme): (Box<dyn WsIo>, &str) = match ca {
            None => (Box::new(tcp), "ws"),
            Some(ca) => {
                let pem = std::fs::read(ca)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots.add(c?)?;
                }
                let mut cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
                let name = rustls_pki_types::ServerName::try_from(HOST.to_string())?;
                (Box::new(connector.connect(name, tcp).await?), "wss")
            }
        };
        let mut req =
            format!("{scheme}://{HOST}:{}/xmpp-websocket", addr.port()).into_client_request()?;
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p)?);
        }
        for (k, v) in headers {
            req.headers_mut().insert(*k, HeaderValue::from_str(v)?);
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, io))
            .await
            .map_err(|_| anyhow!("WebSocket handshake timed out"))??;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(WsClient {
            ws,
            protocol,
            features: None,
            jid: None,
            ids: 0,
        })
    }

    /// A fresh id.
    pub fn id(&mut self) -> String {
        self.ids += 1;
        format!("w{}", self.ids)
    }

    /// Sends one text message.
    pub async fn send(&mut self, text: &str) {
        let _ = self.ws.send(Message::text(text)).await;
    }

    /// The next text message (pings and pongs skipped); `Err` when the WebSocket closed.
    pub async fn next_text(&mut self) -> Result<String> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for the server"))?;
            match m {
                None => bail!("WebSocket closed"),
                Some(Err(e)) => bail!("WebSocket error: {e}"),
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(f))) => bail!("WebSocket closed by the server: {f:?}"),
                Some(Ok(Message::Binary(_))) => bail!("the server sent a binary message"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next element (each message parsed on its own).
    pub async fn next(&mut self) -> Result<Element> {
        parse_message(&self.next_text().await?)
    }

    /// Waits for an element matching `pred`, skipping others.
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Result<Element> {
        loop {
            let e = self.next().await?;
            if pred(&e) {
                return Ok(e);
            }
        }
    }

    /// Whether nothing arrives within `d`.
    pub async fn nothing_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.ws.next()).await.is_err()
    }

    /// Sends `<open/>` to `host` and reads the server's `<open/>` and features.
    pub async fn open(&mut self, host: &str) -> Result<Element> {
        self.send(&format!(
            "<open xmlns='{FRAMING}' to='{host}' version='1.0'/>"
        ))
        .await;
        let open = self.next().await?;
        if !open.is("open", FRAMING) {
            bail!("expected <open/>, got {open}");
        }
        let f = self.next().await?;
        if !f.is("features", canto_stanza::ns::STREAMS) {
            bail!("expected features, got {f}");
        }
        self.features = Some(f);
        Ok(open)
    }

    /// The SASL mechanisms offered in the last features.
    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.get_child("mechanisms", canto_stanza::ns::SASL))
            .map(|m| m.children().map(|c| c.text()).collect())
            .unwrap_or_default()
    }

    /// SASL PLAIN.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b64}</auth>"
        ))
        .await;
        let e = self.next().await?;
        if !e.is("success", canto_stanza::ns::SASL) {
            bail!("SASL failed: {e}");
        }
        Ok(())
    }

    /// Binds `resource`; returns the full JID.
    pub async fn bind(&mut self, resource: &str) -> Result<String> {
        let id = self.id();
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let r = self.wait_for(|e| e.attr("id") == Some(id.as_str())).await?;
        let jid = r
            .get_child("bind", canto_stanza::ns::BIND)
            .and_then(|b| b.get_child("jid", canto_stanza::ns::BIND))
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("no bind result: {r}"))?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    /// Open, PLAIN, restart, bind.
    pub async fn login(&mut self, user: &str, password: &str, resource: &str) -> Result<String> {
        self.open(HOST).await?;
        self.auth_plain(user, password).await?;
        self.open(HOST).await?;
        self.bind(resource).await
    }

    /// An IQ round trip: `{id}` in `xml` is replaced by a fresh id; returns the answer.
    pub async fn iq(&mut self, xml: &str) -> Result<Element> {
        let id = self.id();
        self.send(&xml.replace("{id}", &id)).await;
        self.wait_for(|e| e.is("iq", canto_stanza::ns::CLIENT) && e.attr("id") == Some(id.as_str()))
            .await
    }
}

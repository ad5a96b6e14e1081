//! Hosted services (Prosody's components): a domain whose stanzas, of every kind, go to one
//! module. A test service, `echo.HOST`, proves the seam end to end — IQ, message and presence
//! in, stanzas out (to a session, to an account's bare JID, to a remote domain whose error comes
//! back to the service), disco#items on the parent host, a forged `from` refused, and the
//! user's blocklist applied both ways.
use std::sync::{Arc, Mutex};

use canto_core::{Module, ModuleCtx, Service, ServiceCtx, Spec};
use canto_stanza::{ns, stanza::iq_result};
use canto_tests::*;
use canto_xml::Element;

/// Answers as a tiny component would; remembers the last user who wrote to it.
#[derive(Default)]
struct Echo {
    last_user: Mutex<Option<String>>,
}

struct EchoModule;

impl Module for EchoModule {
    fn name(&self) -> &'static str {
        "echo-service"
    }
    fn specs(&self) -> &'static [Spec] {
        &[]
    }
    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        for host in ctx.config().hosts.clone() {
            ctx.add_service(
                &format!("echo.{host}"),
                &host,
                "Echo service",
                Arc::new(Echo::default()),
            )?;
        }
        Ok(())
    }
}

fn text_of(el: &Element, name: &str) -> Option<String> {
    el.get_child(name, ns::CLIENT).map(|b| b.text())
}

#[async_trait::async_trait]
impl Service for Echo {
    async fn handle(&self, ctx: &ServiceCtx, el: Element) {
        let from = el.attr("from").unwrap_or_default().to_string();
        let to = el.attr("to").unwrap_or_default().to_string();
        let kind = el.attr("type").unwrap_or_default().to_string();
        match el.name() {
            "iq" if kind == "get" || kind == "set" => {
                let payload = el
                    .children()
                    .next()
                    .map(|p| (p.name().to_string(), p.ns().to_string()));
                let reply = match payload.as_ref().map(|(n, s)| (n.as_str(), s.as_str())) {
                    Some(("query", ns::DISCO_INFO)) => iq_result(
                        &el,
                        Some(
                            Element::new("query", ns::DISCO_INFO)
                                .with_child(
                                    Element::new("identity", ns::DISCO_INFO)
                                        .with_attr("category", "component")
                                        .with_attr("type", "generic")
                                        .with_attr("name", "Echo"),
                                )
                                .with_child(
                                    Element::new("feature", ns::DISCO_INFO)
                                        .with_attr("var", "urn:example:echo"),
                                ),
                        ),
                    ),
                    Some(("ping", "urn:xmpp:ping")) => iq_result(&el, None),
                    _ => canto_stanza::stanza::error_reply(
                        &el,
                        &canto_stanza::StanzaError::new(
                            canto_stanza::Condition::FeatureNotImplemented,
                        ),
                    ),
                };
                ctx.send(reply).await;
            }
            "message" if kind == "error" => {
                // An error for something this service sent: tell the user who asked for it.
                let cond = el
                    .get_child("error", ns::CLIENT)
                    .and_then(|e| e.children().next().map(|c| c.name().to_string()))
                    .unwrap_or_default();
                let user = self.last_user.lock().ok().and_then(|u| u.clone());
                if let Some(user) = user {
                    ctx.send(
                        Element::new("message", ns::CLIENT)
                            .with_attr("from", ctx.domain())
                            .with_attr("to", user)
                            .with_child(
                                Element::new("body", ns::CLIENT)
                                    .with_text(format!("bounced: {cond}")),
                            ),
                    )
                    .await;
                }
            }
            "message" => {
                if let Ok(mut u) = self.last_user.lock() {
                    *u = Some(from.clone());
                }
                let body = text_of(&el, "body").unwrap_or_default();
                let (reply_from, reply_to, text) = match body.as_str() {
                    // Out to a remote domain: the error must come back to this service.
                    "remote" => (
                        to.clone(),
                        "someone@remote.example".to_string(),
                        body.clone(),
                    ),
                    // To the sender's bare JID: delivered as RFC 6121 §8.5.2 says.
                    "bare" => (
                        to.clone(),
                        from.split('/').next().unwrap_or_default().to_string(),
                        "to your bare JID".to_string(),
                    ),
                    // On to someone else.
                    b if b.starts_with("tell:") => (
                        to.clone(),
                        b["tell:".len()..].to_string(),
                        "told".to_string(),
                    ),
                    // Forged: a service may only speak for its own domain.
                    "forge" => (
                        format!("alice@{HOST}/x"),
                        from.clone(),
                        "forged".to_string(),
                    ),
                    _ => (to.clone(), from.clone(), format!("echo: {body}")),
                };
                let mut m = Element::new("message", ns::CLIENT)
                    .with_attr("from", reply_from)
                    .with_attr("to", reply_to)
                    .with_attr("type", "chat")
                    .with_child(Element::new("body", ns::CLIENT).with_text(text));
                if body == "remote" {
                    m.set_attr("id", "out1");
                }
                ctx.send(m).await;
            }
            "presence" => {
                // Like a room: presence to room@echo/nick is reflected back from that JID.
                let mut p = Element::new("presence", ns::CLIENT)
                    .with_attr("from", to)
                    .with_attr("to", from);
                if kind == "unavailable" {
                    p.set_attr("type", "unavailable");
                }
                ctx.send(p).await;
            }
            _ => {}
        }
    }
}

async fn server() -> TestServer {
    let mut config = test_config();
    config.modules.push("echo-service".into());
    let s = TestServer::with_modules(
        config,
        canto_storage::Storage::memory(),
        vec![Arc::new(EchoModule) as Arc<dyn Module>],
    )
    .await;
    s.add_user("alice", "pw").await;
    s
}

fn body(e: &Element) -> Option<String> {
    text_of(e, "body")
}

#[tokio::test]
async fn a_service_domain_answers_iq_and_is_listed_on_its_host() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    let echo = format!("echo.{HOST}");
    let info = a
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{echo}'><query xmlns='{}'/></iq>",
            ns::DISCO_INFO
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(info.attr("type"), Some("result"), "{info}");
    assert_eq!(info.attr("from"), Some(echo.as_str()), "{info}");
    assert!(info.to_string().contains("urn:example:echo"), "{info}");
    // An IQ the service does not know: its own error, routed back to the session.
    let err = a
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{echo}'><x xmlns='urn:unknown'/></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("feature-not-implemented")
    );
    // XEP-0030 §4.1: the host lists its services, and only its own.
    let items = a
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='{HOST}'><query xmlns='{}'/></iq>",
            ns::DISCO_ITEMS
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let jids: Vec<String> = items
        .get_child("query", ns::DISCO_ITEMS)
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("jid").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // The default group chat, publish-subscribe and upload services are listed beside it (XEP-0030
    // §4.1, sorted).
    assert_eq!(
        jids,
        vec![
            format!("conference.{HOST}"),
            echo.clone(),
            format!("pubsub.{HOST}"),
            format!("upload.{HOST}")
        ],
        "{items}"
    );
    // A sub-domain nobody serves is still remote.
    a.send(&format!(
        "<message to='x@nothing.{HOST}' id='n1'><body>x</body></message>"
    ))
    .await;
    let e = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
    s.stop().await;
}

#[tokio::test]
async fn messages_and_presence_go_in_and_out_of_a_service() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    a.send("<presence/>").await;
    a.wait_for(|e| e.name() == "presence")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let echo = format!("echo.{HOST}");
    // Message in, message out to the full JID.
    a.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>hello</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m).as_deref(), Some("echo: hello"), "{m}");
    assert_eq!(m.attr("from"), Some(format!("bot@{echo}").as_str()));
    assert_eq!(m.attr("to"), Some(a.full_jid().as_str()));
    // Out to the bare JID: delivered to the available resource.
    a.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>bare</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m).as_deref(), Some("to your bare JID"), "{m}");
    // Presence in (directed, to a full JID at the service) and out.
    a.send(&format!("<presence to='room@{echo}/nick'/>")).await;
    let p = a
        .wait_for(|e| {
            e.name() == "presence" && e.attr("from") == Some(&format!("room@{echo}/nick"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), None, "{p}");
    a.send(&format!(
        "<presence to='room@{echo}/nick' type='unavailable'/>"
    ))
    .await;
    let p = a
        .wait_for(|e| {
            e.name() == "presence" && e.attr("from") == Some(&format!("room@{echo}/nick"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    // The service sends to a remote domain; the error is routed back to the service (no
    // session involved), which reports it.
    a.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>remote</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        body(&m).as_deref(),
        Some("bounced: remote-server-not-found"),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_service_cannot_forge_from_and_blocklists_apply_to_it() {
    let s = server().await;
    let mut a = s.login("alice", "pw", "r").await;
    let echo = format!("echo.{HOST}");
    // The service tries to send as alice@HOST/x: dropped. The ping after it proves the
    // router was done with it (stanzas from one client are handled in order), so the
    // next message alice gets is the echo of "after", not the forgery.
    a.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>forge</body></message>"
    ))
    .await;
    a.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>after</body></message>"
    ))
    .await;
    let m = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body(&m).as_deref(), Some("echo: after"), "{m}");
    // XEP-0191: alice blocks the service's domain. Her messages to it are refused
    // (not-acceptable with <blocked/>), and nothing of the service's reaches her.
    let r = a
        .iq(&format!(
            "<iq type='set' id='{{id}}'><block xmlns='urn:xmpp:blocking'><item jid='{echo}'/></block></iq>"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    a.send(&format!(
        "<message to='bot@{echo}' type='chat' id='b1'><body>x</body></message>"
    ))
    .await;
    let e = a
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("not-acceptable"),
        "{e}"
    );
    // Bob asks the service to write to alice: her blocklist drops it (XEP-0191 §3.3), and the
    // service — the origin — gets service-unavailable back, which it reports to bob.
    s.add_user("bob", "pw").await;
    let mut b = s.login("bob", "pw", "r").await;
    b.send(&format!(
        "<message to='bot@{echo}' type='chat'><body>tell:alice@{HOST}/r</body></message>"
    ))
    .await;
    let m = b
        .wait_for(|e| e.name() == "message")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        body(&m).as_deref(),
        Some("bounced: service-unavailable"),
        "{m}"
    );
    assert!(
        a.nothing_within(std::time::Duration::from_millis(200))
            .await,
        "nothing from a blocked service"
    );
    s.stop().await;
}

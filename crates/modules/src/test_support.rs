//! Test helpers: a real server over memory storage, and a way to call the IQ handler the router
//! would pick.

use std::sync::Arc;

use canto_core::{Config, IqRequest, IqTarget, Origin, Server};
use canto_stanza::{FullJid, IqType, Jid, StanzaError, ns, parse_jid};
use canto_xml::Element;

/// The served domain in tests.
pub(crate) const HOST: &str = "example.test";

/// A server on [`HOST`] with the named modules enabled and accounts alice and bob.
pub(crate) async fn server_with_modules(modules: &[&str]) -> Result<Arc<Server>, String> {
    server_with_config(Config {
        hosts: vec![HOST.into()],
        modules: modules.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    })
    .await
}

/// A server built from `config`, with accounts alice and bob.
pub(crate) async fn server_with_config(config: Config) -> Result<Arc<Server>, String> {
    server_with_storage(config, canto_storage::Storage::memory()).await
}

/// A server built from `config` on `storage`, with accounts alice and bob.
pub(crate) async fn server_with_storage(
    config: Config,
    storage: canto_storage::Storage,
) -> Result<Arc<Server>, String> {
    let creds = canto_proto::sasl::Credentials::from_password("pw", 4096);
    for user in ["alice", "bob"] {
        storage
            .accounts
            .create(HOST, user, &creds)
            .await
            .map_err(|e| format!("creating {user}: {e}"))?;
    }
    Server::new(config, storage, &crate::all())
}

/// Like [`server_with_modules`], panicking on failure.
pub(crate) async fn server(modules: &[&str]) -> Arc<Server> {
    server_with_modules(modules)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What calling a handler gave: `None` when no handler is registered (the router would answer
/// `service-unavailable`).
pub(crate) type Outcome = Option<Result<Option<Element>, StanzaError>>;

/// Sends `payload` in an IQ of `kind` from the full JID `from` to `to`, through the handler
/// registered for `target`, as the router does.
pub(crate) async fn call(
    server: &Arc<Server>,
    target: IqTarget,
    kind: IqType,
    from: &str,
    to: &str,
    payload: Element,
) -> Outcome {
    let from = FullJid::new(from).unwrap_or_else(|e| panic!("{from}: {e}"));
    let to: Jid = parse_jid(to).unwrap_or_else(|e| panic!("{to}: {e}"));
    let kind_attr = match kind {
        IqType::Get => "get",
        IqType::Set => "set",
        IqType::Result => "result",
        IqType::Error => "error",
    };
    let stanza = Element::new("iq", ns::CLIENT)
        .with_attr("type", kind_attr)
        .with_attr("id", "t1")
        .with_attr("from", from.to_string())
        .with_attr("to", to.to_string())
        .with_child(payload);
    let payload = stanza
        .children()
        .next()
        .unwrap_or_else(|| panic!("no payload"));
    let handler = server.modules().iq_handler(target, kind, payload.ns())?;
    // The session that sent it, as the router would name it; a test that bound none calls
    // from outside any session (handlers must then not assume one).
    let session = server.sessions.get(&from);
    let from = Jid::from(from);
    let origin = match &session {
        Some(s) => Origin::Session(s),
        None => Origin::Service {
            domain: from.domain().as_str(),
            from: &from,
        },
    };
    let req = IqRequest {
        server,
        origin,
        from: &from,
        to: &to,
        stanza: &stanza,
        payload,
    };
    Some(handler.handle(req).await)
}

/// A get through the handler for `target`.
pub(crate) async fn get(
    server: &Arc<Server>,
    target: IqTarget,
    from: &str,
    to: &str,
    payload: Element,
) -> Outcome {
    call(server, target, IqType::Get, from, to, payload).await
}

/// The serialized result payload, or a description of what came instead.
pub(crate) fn result_xml(outcome: Outcome) -> String {
    match outcome {
        None => "no handler".into(),
        Some(Ok(None)) => "empty result".into(),
        Some(Ok(Some(el))) => el.to_string(),
        Some(Err(e)) => format!("error {}", e.condition.as_str()),
    }
}

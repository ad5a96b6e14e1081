//! The publish-subscribe request parser and engine (`canto_modules::pubsub`): arbitrary
//! payloads, each parsed as XML and handed, as the router would, to the handler the PEP
//! service of `user@localhost` registered for its namespace (pubsub, pubsub#owner; bookmarks
//! and vcard conversions ride along), from the owner or from another account, on one fresh
//! server per input (memory storage). The hosted service shares the engine; the `c2s` targets
//! reach it through the router. Checked besides no panic / hang / runaway memory: every answer,
//! result or error, serializes to XML that parses back.
//!
//! Input format: requests separated by 0xFF; the first byte of each says who sends it
//! (bit 0: owner or the other account) and whether it is a get or a set (bit 1); the rest is
//! the payload's XML.
#![no_main]
use std::sync::Arc;

use canto_core::{IqRequest, IqTarget, Origin, Server};
use canto_stanza::{IqType, Jid, ns, parse_jid};
use canto_xml::Element;
use libfuzzer_sys::fuzz_target;

fn parse(bytes: &[u8]) -> Option<Element> {
    canto_core::roster::decode_element(bytes)
}

fn reparses(el: &Element) -> bool {
    parse(&el.to_bytes()).is_some()
}

async fn server() -> Arc<Server> {
    let storage = canto_storage::Storage::memory();
    let creds = canto_proto::sasl::Credentials::from_password("pencil", 4096);
    for u in ["user", "other"] {
        let _ = storage.accounts.create("localhost", u, &creds).await;
    }
    let config = canto_core::Config {
        modules: ["disco", "roster", "pep", "pubsub", "private", "bookmarks", "vcard"]
            .iter()
            .map(|m| m.to_string())
            .collect(),
        ..canto_core::Config::default()
    };
    match Server::new(config, storage, &canto_modules::all()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        let s = server().await;
        for chunk in data.split(|b| *b == 0xFF).take(16) {
            let Some((&flags, xml)) = chunk.split_first() else {
                continue;
            };
            let Some(payload) = parse(xml) else { continue };
            let from = if flags & 1 == 0 {
                "user@localhost/r"
            } else {
                "other@localhost/r"
            };
            let set = flags & 2 != 0;
            let to = "user@localhost";
            let (Ok(from_jid), Ok(to_jid)) = (parse_jid(from), parse_jid(to)) else {
                continue;
            };
            let stanza = Element::new("iq", ns::CLIENT)
                .with_attr("type", if set { "set" } else { "get" })
                .with_attr("id", "f")
                .with_attr("from", from)
                .with_attr("to", to)
                .with_child(payload.clone());
            let kind = if set { IqType::Set } else { IqType::Get };
            let Some(handler) =
                s.modules()
                    .iq_handler_for("localhost", IqTarget::Account, kind, payload.ns())
            else {
                continue;
            };
            let from_j: Jid = from_jid;
            let origin = Origin::Service {
                domain: "localhost",
                from: &from_j,
            };
            let req = IqRequest {
                server: &s,
                origin,
                from: &from_j,
                to: &to_jid,
                stanza: &stanza,
                payload: &payload,
            };
            match handler.handle(req).await {
                Ok(Some(reply)) => assert!(reparses(&reply), "{reply}"),
                Ok(None) => {}
                Err(e) => assert!(reparses(&e.to_element(ns::CLIENT))),
            }
        }
        // Let spawned notifications and caps queries finish (virtual time).
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
});

//! The MUC room state machine (`canto_modules::muc::room`): arbitrary stanzas from several
//! users (two sessions each) to a room, to its occupants and in the room's IQ namespaces,
//! dispatched as the service dispatches them. Checked besides no panic / hang / runaway
//! memory: every stanza the room sends parses back and is addressed to a real JID that is or
//! was in the room or named by the input, and the room's own invariants hold after each step
//! (every session mapped to its occupant, history within its length, an owner once unlocked).
//!
//! Input format: stanzas separated by 0xFF; the first byte of each picks the sender (bits
//! 0–1: one of four users, bit 2: its second session), the address (bits 3–4: the room, an
//! occupant nick from the sender's bits 5–6, or the room as an IQ get), and whether the clock
//! moves a minute on (bit 7); the rest is the stanza's XML.
#![no_main]
use canto_modules::muc::config::{Bounds, RoomConfig};
use canto_modules::muc::room::{Env, MessageOutcome, Room};
use canto_xml::Element;
use libfuzzer_sys::fuzz_target;

const ROOM: &str = "room@conference.localhost";
const USERS: [&str; 4] = ["owner@localhost", "a@localhost", "b@remote.example", "c@localhost"];
const NICKS: [&str; 4] = ["Owner", "A", "B", "C"];
const B: Bounds = Bounds {
    max_users: 6,
    max_history: 5,
    default_history: 3,
};

fn parse(bytes: &[u8]) -> Option<Element> {
    canto_core::roster::decode_element(bytes)
}

fn check(out: &[Element]) {
    for s in out {
        assert!(parse(&s.to_bytes()).is_some(), "does not reparse: {s}");
        let to = s.attr("to").unwrap_or_default();
        assert!(canto_stanza::parse_jid(to).is_ok(), "bad to: {s}");
        assert!(s.attr("from").is_some_and(|f| f.starts_with(ROOM)), "bad from: {s}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = 1_000_000i64;
    let secret = [7u8; 32];
    let mut room = Room::new(ROOM, USERS[0], RoomConfig::new(B));
    for chunk in data.split(|b| *b == 0xFF).take(64) {
        let Some((&flags, xml)) = chunk.split_first() else {
            continue;
        };
        let Some(el) = parse(xml) else { continue };
        if flags & 0x80 != 0 {
            now += 60_000;
        }
        let user = usize::from(flags & 3);
        let from = format!("{}/{}", USERS[user], if flags & 4 == 0 { "one" } else { "two" });
        let nick = NICKS[usize::from((flags >> 5) & 3)];
        let env = Env {
            now_ms: now,
            bounds: B,
            rate: (1.0, 4.0),
            max_nick_bytes: 32,
            max_subject_bytes: 64,
            sender_is_admin: false,
            secret: &secret,
        };
        let mut sent = Vec::new();
        match ((flags >> 3) & 3, el.name()) {
            (0, "message") => match room.message(&from, &el, &env) {
                Ok(MessageOutcome::Done(out)) => sent = out.stanzas,
                Ok(MessageOutcome::Groupchat(a)) => {
                    sent = room.broadcast(a, Some(format!("id{now}")), &env).stanzas;
                }
                Err(e) => assert!(parse(&e.to_element("jabber:client").to_bytes()).is_some()),
            },
            (0 | 3, "iq") => {
                let Some(payload) = el.children().next() else { continue };
                if flags & 0x18 == 0x18 {
                    let _ = room.admin_get(&from, payload, &env);
                    let _ = room.owner_get(&from, &env);
                    let _ = room.register_get(&from);
                } else if let Ok(out) = room.iq_set(&from, payload, &env) {
                    sent = out.stanzas;
                }
            }
            (1, "presence") => {
                if let Ok(out) = room.presence(&from, nick, &el, &env) {
                    sent = out.burst.into_iter().chain(out.stanzas).collect();
                }
            }
            (2, "message") => {
                if let Ok(out) = room.private_message(&from, nick, &el, &env) {
                    sent = out.stanzas;
                }
            }
            (1, _) => {
                // A nick given in the XML itself (any string the router would accept).
                if let Some(n) = el.attr("nick").and_then(canto_stanza::jid::normalize_resource)
                    && let Ok(out) = room.presence(&from, &n, &el, &env)
                {
                    sent = out.burst.into_iter().chain(out.stanzas).collect();
                }
            }
            _ => {}
        }
        check(&sent);
        if let Err(e) = room.check_invariants() {
            panic!("{e}");
        }
    }
});

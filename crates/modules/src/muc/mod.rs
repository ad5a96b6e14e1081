//! `muc`: multi-user chat services (XEP-0045, Prosody's mod_muc component): `conference.HOST`
//! for every host by default, more with `[services."DOMAIN"] kind = "muc"`. docs/muc.md gives
//! the configuration and every choice XEP-0045 leaves open.
//!
//! [`room`] is each room's state machine without I/O; [`service`] finds rooms, keeps the
//! persistent ones in the module's stores (map `muc_rooms`, archive `muc_log`) and sends what a
//! room answers; [`config`] is the room configuration form.

use canto_core::module::ModuleConfig;
use canto_stanza::parse_jid;
use serde::{Deserialize, Serialize};

pub mod config;
pub mod room;
pub mod service;

pub use service::Muc;

/// Namespace of the stored room record (ours).
pub const NS_STORE: &str = "urn:canto:muc:0";

/// Who may create rooms (`restrict_room_creation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Creation {
    /// Any entity.
    Anyone,
    /// Accounts of this server's hosts.
    Local,
    /// Only `admins`.
    Admins,
}

/// `[muc]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Who may create rooms.
    pub restrict_room_creation: Creation,
    /// Bare JIDs that own every room.
    pub admins: Vec<String>,
    /// Rooms one bare JID may own.
    pub max_rooms_per_user: usize,
    /// Rooms per service.
    pub max_rooms: usize,
    /// The largest `maxusers`, and a new room's.
    pub max_occupants: usize,
    /// A new room's history length.
    pub default_history: usize,
    /// The largest history length.
    pub max_history: usize,
    /// Messages per second per occupant.
    pub message_rate: f32,
    /// Burst of messages.
    pub message_burst: f32,
    /// Longest nick, bytes.
    pub max_nick_bytes: usize,
    /// Longest subject, bytes.
    pub max_subject_bytes: usize,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            restrict_room_creation: Creation::Local,
            admins: Vec::new(),
            max_rooms_per_user: 100,
            max_rooms: 10_000,
            max_occupants: 1000,
            default_history: 20,
            max_history: 100,
            message_rate: 5.0,
            message_burst: 15.0,
            max_nick_bytes: 1023,
            max_subject_bytes: 1024,
        }
    }
}

impl MucConfig {
    /// The bounds a room configuration must respect.
    pub fn bounds(&self) -> config::Bounds {
        config::Bounds {
            max_users: self.max_occupants,
            max_history: self.max_history,
            default_history: self.default_history,
        }
    }
}

impl ModuleConfig for MucConfig {
    const SECTION: &'static str = "muc";
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "Multi-user chat services (XEP-0045), module muc: conference.HOST for every host,\nand each [services.\"DOMAIN\"] of kind \"muc\". docs/muc.md has the details.",
        ),
        (
            "restrict_room_creation",
            "Who may create rooms: \"anyone\", \"local\" (accounts here) or \"admins\".",
        ),
        ("admins", "Bare JIDs that are owners of every room."),
        (
            "max_rooms_per_user",
            "Rooms one user may own; creating one more is not-allowed.",
        ),
        (
            "max_rooms",
            "Rooms per service; creating one more is resource-constraint.",
        ),
        (
            "max_occupants",
            "Occupants per room at most (muc#roomconfig_maxusers), and a new room's limit.",
        ),
        (
            "default_history",
            "Messages of discussion history a new room keeps (sent on join).",
        ),
        (
            "max_history",
            "The most history a room may be configured to keep.",
        ),
        (
            "message_rate",
            "Messages per second one occupant may send (token bucket; beyond: resource-constraint).",
        ),
        ("message_burst", "Messages one occupant may send at once."),
        ("max_nick_bytes", "Longest nickname, bytes."),
        ("max_subject_bytes", "Longest room subject, bytes."),
    ];

    fn validate(&self) -> Result<(), String> {
        for a in &self.admins {
            let j = parse_jid(a).map_err(|_| format!("admins: {a:?} is not a JID"))?;
            if j.resource().is_some() {
                return Err(format!("admins: {a:?} must be a bare JID"));
            }
        }
        if self.max_occupants == 0 {
            return Err("max_occupants must be at least 1".into());
        }
        if self.default_history > self.max_history {
            return Err("default_history must not exceed max_history".into());
        }
        if !(self.message_rate > 0.0 && self.message_burst >= 1.0) {
            return Err("message_rate must be positive and message_burst at least 1".into());
        }
        if self.max_nick_bytes == 0 || self.max_nick_bytes > 1023 {
            return Err("max_nick_bytes must be 1 to 1023 (a JID resource)".into());
        }
        Ok(())
    }
}

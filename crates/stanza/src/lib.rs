//! XMPP vocabulary: JIDs, the stanza envelope, stream and stanza errors, namespaces.
#![forbid(unsafe_code)]

pub mod datetime;
pub mod error;
pub mod jid;
pub mod ns;
pub mod stanza;

pub use error::{Condition, ErrorType, StanzaError, StreamCondition, StreamError};
pub use jid::{BareJid, FullJid, Jid, parse_jid};
pub use stanza::{IqType, MessageType, PresenceType, StanzaKind};

//! Canto's XML layer: a restricted, budgeted, incremental XMPP stream parser on `rxml`, a small
//! element tree and its serializer. No I/O happens here.
#![forbid(unsafe_code)]

mod element;
mod serialize;
mod stream;

pub use element::{Element, Node};
pub use serialize::{escape, escape_attr_into, escape_into};
pub use stream::{LimitKind, Limits, StreamEvent, StreamParser, XmlError};

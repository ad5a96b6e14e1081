//! Sans-I/O protocol state machines: SASL, c2s stream negotiation, the XEP-0114 component
//! handshake.
#![forbid(unsafe_code)]

pub mod c2s;
pub mod caps;
pub mod component;
pub mod register;
pub mod s2s;
pub mod sasl;
pub mod sm;
pub mod upload;

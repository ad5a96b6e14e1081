//! Server-to-server federation (RFC 6120, XEP-0220 dialback, XEP-0288 bidirectional streams,
//! XEP-0368 direct TLS): listeners, outgoing connections, authentication of peers, routing
//! (docs/federation.md).

pub mod dns;
pub mod verify;

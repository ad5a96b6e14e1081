//! The whole c2s state machine (`canto_net::c2s`: negotiation, SASL, binding, routing, modules,
//! session destruction) over an in-memory transport (`serve_memory`), driven by arbitrary client
//! bytes. One fresh server per input: memory storage holding one account (`user` / `pencil` on
//! `localhost`), `require_encryption = false` so SASL is offered without TLS.
//!
//! Input format: client turns separated by 0xFF (a byte that never occurs in UTF-8, so no XML
//! needs it). After each turn the client waits until the server is idle, as a real client waits
//! for an answer: pipelining across a SASL success would lose the restart (RFC 6120 §6.4.6 says
//! the client waits). After the last turn the client closes its end.
//!
//! Checked, besides no panic / hang / unbounded memory (libFuzzer's `-timeout` and
//! `-rss_limit_mb`):
//! * the connection task ends once the client has closed (time is virtual: a task waiting for
//!   something that never comes shows up as an elapsed 1-hour timeout, not as a slow input);
//! * afterwards no session is left in the routing table (every bound session ends through
//!   `Server::destroy_session`, ARCHITECTURE.md);
//! * everything the server wrote is well-formed XML: each stream (from a `<?xml` header to the
//!   next) parses without error (output is re-serialized from the parsed tree, never echoed).
#![no_main]

/// The default module set.
const ALL_MODULES: bool = false;

include!("c2s_harness.rs");

//! Peer certificates: chain and name verification (see `s2s/mod.rs`).

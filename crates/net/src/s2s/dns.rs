//! DNS for outgoing server connections (see `s2s/mod.rs`).

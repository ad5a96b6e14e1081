//! The c2s harness of `c2s.rs` (see there for the input format and what is checked) with every
//! module enabled — `mam`, `register` (in-band registration before authentication) and
//! `extdisco` included, which the default configuration leaves off.
#![no_main]

/// Every module on.
const ALL_MODULES: bool = true;

include!("c2s_harness.rs");

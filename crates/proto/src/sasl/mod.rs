//! SASL (RFC 6120 §6, RFC 4422): server-side mechanisms, sans I/O.

mod keys;

pub use keys::{Credentials, DEFAULT_ITERATIONS, HashAlgo, ScramKeys};

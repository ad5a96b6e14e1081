//! End-to-end tests over real sockets, one module per subject, all in one test binary: one link of
//! the server instead of one per file (each was ~130 MB in debug, and 22 of them filled a CI disk).
//! cargo-nextest, the test command README.md gives, still runs every test in its own process.
//!
//! tests/tests/tokio_xmpp.rs stays a binary of its own: it sets an environment variable.

mod auth;
mod bad_input;
mod blocking;
mod bookmarks;
mod bosh;
mod carbons;
mod cli;
mod cluster;
mod cluster_procs;
mod component;
mod csi;
mod disco;
mod durability;
mod extdisco;
mod faults;
mod federation;
mod federation_harness;
mod federation_im;
mod federation_peers;
mod im;
mod lang;
mod last;
mod limits;
mod mam;
mod metrics;
mod muc;
mod muc_admin;
mod muc_smoke;
mod pep;
mod private;
mod pubsub;
mod register;
mod routing;
mod services;
mod sessions;
mod slixmpp;
mod sm;
mod smoke;
mod upload;
mod vcard;
mod web;
mod websocket;

//! The `canto` binary's library: command line, startup sequence, account administration.
#![forbid(unsafe_code)]

pub mod checkdns;
pub mod cli;
pub mod logging;
pub mod startup;
pub mod storage_cmd;
pub mod users;

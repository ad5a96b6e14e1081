//! Canto's core: configuration, the session manager, the router and the module API. It never
//! touches sockets: connections live in `canto-net`, which hands it parsed stanzas.
#![forbid(unsafe_code)]

pub mod auth;
pub mod blocking;
pub mod carbons;
pub mod config;
pub mod module;
pub mod offline;
pub mod presence;
pub mod register;
pub mod roster;
mod router;
pub mod server;
pub mod session;
pub mod sm;

pub use config::Config;
pub use module::{
    Identity, IqHandler, IqRequest, IqTarget, MessageHook, Module, ModuleCtx, ModuleTable, Spec,
    UnavailableHook,
};
pub use server::Server;
pub use session::{
    Bound, Closer, DeliveryError, Outbound, SessionHandle, SessionId, SessionManager,
};

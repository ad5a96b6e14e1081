//! Canto's core: configuration, the session manager, the router and the module API. It never
//! touches sockets: connections live in `canto-net`, which hands it parsed stanzas.
#![forbid(unsafe_code)]

pub mod auth;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod cluster;
pub mod component;
pub mod config;
pub mod locks;
pub mod metrics;
pub mod module;
pub mod offline;
pub mod presence;
pub mod register;
pub mod remote;
pub mod roster;
mod router;
pub mod server;
pub mod session;
pub mod sm;
pub mod stores;

pub use config::Config;
pub use module::{
    Addressed, BoxFuture, Direction, HookPoint, Hooked, Identity, IqHandler, IqRequest, IqTarget,
    MessageHook, Module, ModuleCtx, ModuleTable, Origin, Service, ServiceCtx, ServiceEntry,
    SessionEvent, SessionHook, Spec, StanzaEvent, StanzaHook, Timer, TimerEntry,
};
pub use server::Server;
pub use session::{
    Bound, Closer, DeliveryError, Outbound, SessionHandle, SessionId, SessionManager,
};

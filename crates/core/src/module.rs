//! The module API, modelled on Prosody's `moduleapi`: a module adds features and identities and
//! hooks IQ payloads; the router calls the hooks.

use std::collections::HashMap;
use std::sync::Arc;

use canto_stanza::{FullJid, IqType, Jid, StanzaError};
use canto_xml::Element;

use crate::config::Config;
use crate::server::Server;

/// Which addressee an IQ handler answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqTarget {
    /// The server itself (`to` is a served domain, or absent and no account handler exists).
    Host,
    /// An account: the server answers on the account's behalf (`to` is a bare JID, or absent;
    /// RFC 6120 §10.3.3, RFC 6121 §8.5.2.1.3 and §8.5.2.2.3).
    Account,
}

/// An IQ request as a handler sees it.
pub struct IqRequest<'a> {
    /// The server.
    pub server: &'a Arc<Server>,
    /// The sender, as stamped by the server.
    pub from: &'a FullJid,
    /// The addressee: a served domain or the bare JID of an account.
    pub to: &'a Jid,
    /// The whole `<iq/>`.
    pub stanza: &'a Element,
    /// Its single payload child.
    pub payload: &'a Element,
}

/// Answers one kind of IQ.
#[async_trait::async_trait]
pub trait IqHandler: Send + Sync {
    /// `Ok(payload)` becomes an IQ result, `Err` an error reply.
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError>;
}

/// Sees every one-to-one message between accounts as the router routes it, before delivery
/// (message archives, XEP-0313). It may add to the element (a XEP-0359 stanza-id).
#[async_trait::async_trait]
pub trait MessageHook: Send + Sync {
    /// `sender` is the local account that sent it (None for messages from elsewhere);
    /// `recipient` the local account it is for (None when it leaves the server).
    async fn on_message(
        &self,
        server: &Arc<Server>,
        el: &mut Element,
        sender: Option<&canto_stanza::BareJid>,
        recipient: Option<&canto_stanza::BareJid>,
    );
}

/// Told when an available resource becomes unavailable — by unavailable presence, or by its
/// session ending (Prosody's `resource-unbind` after `pre-presence/bare`): last activity
/// (XEP-0012).
#[async_trait::async_trait]
pub trait UnavailableHook: Send + Sync {
    /// `status` is the `<status/>` text of the unavailable presence, if the client sent one.
    async fn on_unavailable(
        &self,
        server: &Arc<Server>,
        resource: &canto_stanza::FullJid,
        status: Option<String>,
    );
}

/// A disco#info identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `category`, e.g. `server`.
    pub category: &'static str,
    /// `type`, e.g. `im`.
    pub kind: &'static str,
    /// Human-readable name.
    pub name: String,
}

/// A protocol a module implements, for the README and the DOAP file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `"XEP-0199"` or `"RFC 6120"`.
    pub id: &'static str,
    /// Version of the specification implemented.
    pub version: &'static str,
    /// Title.
    pub title: &'static str,
}

/// A feature module. Listed once in `canto-modules`, enabled in config (`modules = [...]`).
pub trait Module: Send + Sync {
    /// The name used in config.
    fn name(&self) -> &'static str;
    /// What it implements.
    fn specs(&self) -> &'static [Spec];
    /// Registers features and hooks.
    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String>;
}

/// What modules registered: consulted by the router and by disco.
#[derive(Default)]
pub struct ModuleTable {
    features: Vec<String>,
    identities: Vec<Identity>,
    iq: HashMap<(IqTarget, IqType, String), Arc<dyn IqHandler>>,
    message_hooks: Vec<Arc<dyn MessageHook>>,
    unavailable_hooks: Vec<Arc<dyn UnavailableHook>>,
    account_features: Vec<String>,
    stream_features: Vec<Element>,
    loaded: Vec<&'static str>,
}

impl ModuleTable {
    /// Loads the modules named in `config.modules` from `available`, in config order.
    pub fn load(config: &Config, available: &[Arc<dyn Module>]) -> Result<ModuleTable, String> {
        let mut table = ModuleTable::default();
        for name in &config.modules {
            let m = available
                .iter()
                .find(|m| m.name() == name)
                .ok_or_else(|| format!("`modules`: no module named {name:?}"))?;
            if table.loaded.contains(&m.name()) {
                continue;
            }
            let mut ctx = ModuleCtx {
                table: &mut table,
                config,
                module: m.name(),
            };
            m.load(&mut ctx)
                .map_err(|e| format!("module {name}: {e}"))?;
            table.loaded.push(m.name());
        }
        Ok(table)
    }

    /// Features advertised in disco#info on the server, sorted (XEP-0030 §3.1).
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Identities of the server.
    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// The handler for an IQ payload, if any.
    pub fn iq_handler(
        &self,
        target: IqTarget,
        kind: IqType,
        ns: &str,
    ) -> Option<Arc<dyn IqHandler>> {
        self.iq.get(&(target, kind, ns.to_string())).cloned()
    }

    /// Message hooks, in load order.
    pub fn message_hooks(&self) -> &[Arc<dyn MessageHook>] {
        &self.message_hooks
    }

    /// Unavailable hooks, in load order.
    pub fn unavailable_hooks(&self) -> &[Arc<dyn UnavailableHook>] {
        &self.unavailable_hooks
    }

    /// Features an account advertises in disco#info (XEP-0030 on a bare JID).
    pub fn account_features(&self) -> &[String] {
        &self.account_features
    }

    /// Names of loaded modules.
    pub fn loaded(&self) -> &[&'static str] {
        &self.loaded
    }

    /// Stream features offered once the client is authenticated (XEP-0198 `<sm/>`, XEP-0352
    /// `<csi/>`), in load order.
    pub fn stream_features(&self) -> &[Element] {
        &self.stream_features
    }

    /// Whether a stream feature in namespace `ns` is offered: the connection accepts that
    /// namespace's elements only then.
    pub fn offers_stream_feature(&self, ns: &str) -> bool {
        self.stream_features.iter().any(|f| f.ns() == ns)
    }
}

/// Handed to [`Module::load`].
pub struct ModuleCtx<'a> {
    table: &'a mut ModuleTable,
    config: &'a Config,
    module: &'static str,
}

impl ModuleCtx<'_> {
    /// Advertises a feature in disco#info.
    pub fn add_feature(&mut self, var: &str) {
        if !self.table.features.iter().any(|f| f == var) {
            self.table.features.push(var.to_string());
            self.table.features.sort();
        }
    }

    /// Advertises a feature on accounts' disco#info (e.g. `urn:xmpp:mam:2`, XEP-0313 §7).
    pub fn add_account_feature(&mut self, var: &str) {
        if !self.table.account_features.iter().any(|f| f == var) {
            self.table.account_features.push(var.to_string());
            self.table.account_features.sort();
        }
    }

    /// Offers a stream feature after authentication; the connection task implements the
    /// protocol behind it (it lives on the connection's read and write paths).
    pub fn add_stream_feature(&mut self, feature: Element) {
        self.table.stream_features.push(feature);
    }

    /// Sees one-to-one messages before delivery.
    pub fn hook_message(&mut self, hook: Arc<dyn MessageHook>) {
        self.table.message_hooks.push(hook);
    }

    /// Is told when an available resource becomes unavailable.
    pub fn hook_unavailable(&mut self, hook: Arc<dyn UnavailableHook>) {
        self.table.unavailable_hooks.push(hook);
    }

    /// Advertises an identity.
    pub fn add_identity(&mut self, identity: Identity) {
        self.table.identities.push(identity);
    }

    /// Handles IQs of `kind` whose payload is in namespace `ns`, addressed to `target`.
    pub fn hook_iq(
        &mut self,
        target: IqTarget,
        kind: IqType,
        ns: &str,
        handler: Arc<dyn IqHandler>,
    ) -> Result<(), String> {
        let key = (target, kind, ns.to_string());
        if self.table.iq.contains_key(&key) {
            return Err(format!("{} hooks {kind:?} {ns} twice", self.module));
        }
        self.table.iq.insert(key, handler);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.config
    }
}

//! `upload`: HTTP File Upload (XEP-0363) as hosted services, Prosody's mod_http_file_share:
//! `upload.HOST` for every host by default, more with `[services."DOMAIN"] kind = "upload"`.
//!
//! The service hands out slots (XEP-0363 §4): a PUT URL with a signed token for the
//! `Authorization` header (§5 lets the server ask for it) and a GET URL. The HTTP side
//! (canto-net `http/upload.rs`) checks the token, stores the file and serves it; the token
//! format, the records and the on-disk layout they share are in `canto_proto::upload`. This
//! module also keeps the per-user quota, expires old files (a timer) and removes a deleted
//! account's files. docs/upload.md is the behaviour contract.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use canto_core::module::{ModuleConfig, Section, Service, ServiceCtx, SubscriptionHook, Timer};
use canto_core::stores::{KvStore, MapStore};
use canto_core::{Module, ModuleCtx, Spec};
use canto_proto::upload::{self as up, NS, Record, Slot};
use canto_stanza::stanza::{error_reply, iq_payload, iq_result};
use canto_stanza::{BareJid, Condition, ErrorType, IqType, Jid, StanzaError, ns, parse_jid};
use canto_xml::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// The module.
pub struct Upload;

const SPECS: &[Spec] = &[Spec {
    id: "XEP-0363",
    version: "1.1.0",
    title: "HTTP File Upload",
}];

const MIB: u64 = 1024 * 1024;

/// XEP-0004 data forms.
const DATA_FORMS: &str = "jabber:x:data";

/// `[upload]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Bytes of one file at most.
    pub max_file_size: u64,
    /// Bytes one user may keep (stored files and outstanding slots).
    pub quota: u64,
    /// Days a file is kept; 0 keeps files forever.
    pub expire_days: u64,
    /// When not 0, seconds a file is kept (overrides `expire_days`; for tests).
    pub expire_after: u64,
    /// Seconds a slot stays valid for its PUT.
    pub slot_lifetime: u64,
    /// Content types accepted (`image/png`, `image/*`); empty: any.
    pub allowed_types: Vec<String>,
    /// Hosts whose users may upload; empty: the service's parent host only.
    pub allowed_hosts: Vec<String>,
    /// Directory of the files, relative to `data_dir` unless absolute.
    pub path: String,
    /// PUTs running at once, server-wide (beyond: 503).
    pub max_concurrent_uploads: usize,
    /// Bytes per second a PUT must average (beyond its time: aborted with 408).
    pub min_upload_rate: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            // ejabberd's mod_http_upload default.
            max_file_size: 100 * MIB,
            quota: 1024 * MIB,
            expire_days: up::DEFAULT_EXPIRE_DAYS,
            expire_after: 0,
            slot_lifetime: 300,
            allowed_types: Vec::new(),
            allowed_hosts: Vec::new(),
            path: up::DEFAULT_PATH.into(),
            max_concurrent_uploads: up::DEFAULT_MAX_CONCURRENT,
            min_upload_rate: up::DEFAULT_MIN_RATE,
        }
    }
}

impl UploadConfig {
    /// Seconds a file is kept (None: forever).
    pub fn expire_secs(&self) -> Option<u64> {
        if self.expire_after > 0 {
            Some(self.expire_after)
        } else if self.expire_days > 0 {
            Some(self.expire_days.saturating_mul(86_400))
        } else {
            None
        }
    }
}

impl ModuleConfig for UploadConfig {
    const SECTION: &'static str = up::SECTION;
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "",
            "HTTP File Upload (XEP-0363), module upload: upload.HOST for every host, and each\n[services.\"DOMAIN\"] of kind \"upload\". Files are sent and fetched over [http]\n(/upload/…); set [http] external_url when clients reach it under another name.\ndocs/upload.md has the details.",
        ),
        (
            "max_file_size",
            "Bytes of one file at most (advertised as max-file-size; beyond: not-acceptable).",
        ),
        (
            "quota",
            "Bytes one user may keep: stored files plus unused slots (beyond: resource-constraint).",
        ),
        ("expire_days", "Days a file is kept; 0 keeps files forever."),
        (
            "expire_after",
            "Seconds a file is kept, overriding expire_days when not 0 (for tests).",
        ),
        (
            "slot_lifetime",
            "Seconds a slot stays valid: its PUT must start within them.",
        ),
        (
            "allowed_types",
            "Content types accepted, e.g. [\"image/*\", \"video/mp4\"]; empty: any.",
        ),
        (
            "allowed_hosts",
            "Hosts whose users may upload; empty: the service's parent host only.",
        ),
        (
            "path",
            "Directory of the files, relative to data_dir unless absolute.",
        ),
        (
            "max_concurrent_uploads",
            "PUTs running at once in all; beyond: 503 (retry later).",
        ),
        (
            "min_upload_rate",
            "Bytes per second a PUT must average (it may take 30 s + size / rate); slower: 408.",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        if self.max_file_size == 0 {
            return Err("max_file_size must be at least 1".into());
        }
        if self.slot_lifetime == 0 {
            return Err("slot_lifetime must be at least 1 second".into());
        }
        if self.path.trim().is_empty() {
            return Err("path must not be empty".into());
        }
        if self.max_concurrent_uploads == 0 {
            return Err("max_concurrent_uploads must be at least 1".into());
        }
        if self.min_upload_rate == 0 {
            return Err("min_upload_rate must be at least 1 byte per second".into());
        }
        for t in &self.allowed_types {
            let ok = match t.strip_suffix("/*") {
                Some(major) => up::normalize_content_type(&format!("{major}/x")).is_some(),
                None => up::normalize_content_type(t).is_some(),
            };
            if !ok {
                return Err(format!("allowed_types: {t:?} is not a content type"));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Stores {
    /// Each service's signing secret (host: the service domain).
    secret: KvStore,
    /// Slots and files per owner (host: the service domain, user: the owner's bare JID).
    files: MapStore,
}

/// Where the files are: `data_dir` joined with `[upload] path`.
#[derive(Clone)]
struct Root {
    data_dir: PathBuf,
    config: Section<UploadConfig>,
}

impl Root {
    fn get(&self) -> PathBuf {
        up::root(&self.data_dir, &self.config.get().path)
    }
}

impl Module for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn config_sections(&self) -> Vec<canto_core::module::SectionInfo> {
        vec![UploadConfig::info()]
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        let config = ctx.section::<UploadConfig>()?;
        let stores = Stores {
            secret: ctx.open_kv(up::SECRET_STORE)?,
            files: ctx.open_map(up::RECORD_STORE)?,
        };
        let root = Root {
            data_dir: ctx.config().data_dir.clone(),
            config: config.clone(),
        };
        let mut domains = Vec::new();
        for spec in ctx.config().services_of_kind("upload") {
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| "HTTP File Upload".to_string());
            let base = base_url(ctx.config(), &spec.parent);
            let service = Arc::new(UploadService {
                domain: spec.domain.clone(),
                parent: spec.parent.clone(),
                name: name.clone(),
                base,
                config: config.clone(),
                stores: stores.clone(),
                secret: OnceCell::new(),
                quota_lock: tokio::sync::Mutex::new(()),
            });
            ctx.add_service(&spec.domain, &spec.parent, &name, service)?;
            domains.push(spec.domain);
        }
        let cleaner = Arc::new(Cleaner {
            domains,
            stores,
            root,
        });
        ctx.hook_subscription(cleaner.clone());
        // Often enough that a file outlives its expiry by at most a quarter of it (an hour at
        // most), and tests with expire_after can see it go.
        let period = config
            .get()
            .expire_secs()
            .map_or(3600, |s| (s / 4).clamp(1, 3600));
        ctx.add_timer(std::time::Duration::from_secs(period), cleaner)?;
        Ok(())
    }
}

/// The public base URL of the HTTP server for `host`: `[http] external_url`, else the first
/// HTTPS (then plain HTTP) listener's port (as canto-net's `HttpContext::external_url`; a
/// listener on port 0 cannot be named here, so set `external_url` with one).
fn base_url(config: &canto_core::Config, host: &str) -> String {
    if !config.http.external_url.is_empty() {
        return config.http.external_url.trim_end_matches('/').to_string();
    }
    let port = |list: &[String]| {
        list.iter()
            .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
            .find(|p| *p != 0)
    };
    match (port(&config.http.https_listen), port(&config.http.listen)) {
        (Some(443), _) => format!("https://{host}"),
        (Some(p), _) => format!("https://{host}:{p}"),
        (None, Some(80)) => format!("http://{host}"),
        (None, Some(p)) => format!("http://{host}:{p}"),
        (None, None) => format!("https://{host}"),
    }
}

/// One upload service (one domain).
struct UploadService {
    domain: String,
    parent: String,
    name: String,
    /// `https://host:port` of the HTTP server.
    base: String,
    config: Section<UploadConfig>,
    stores: Stores,
    secret: OnceCell<Vec<u8>>,
    /// Quota check and slot record as one step.
    quota_lock: tokio::sync::Mutex<()>,
}

fn err(c: Condition, t: ErrorType, text: &str) -> StanzaError {
    StanzaError::new(c).with_type(t).with_text(text)
}

#[async_trait]
impl Service for UploadService {
    async fn handle(&self, ctx: &ServiceCtx, el: Element) {
        if el.name() != "iq" {
            return;
        }
        let Some(kind) = IqType::of(&el) else { return };
        if !kind.is_request() {
            return;
        }
        let reply = match self.iq(&el, kind).await {
            Ok(payload) => iq_result(&el, payload),
            Err(e) => error_reply(&el, &e),
        };
        ctx.send(reply).await;
    }
}

impl UploadService {
    async fn iq(&self, el: &Element, kind: IqType) -> Result<Option<Element>, StanzaError> {
        let Some(payload) = iq_payload(el) else {
            return Err(StanzaError::new(Condition::BadRequest));
        };
        let from = el
            .attr("from")
            .and_then(|f| parse_jid(f).ok())
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        // Only the service's domain is an entity here.
        let to_domain_only = el
            .attr("to")
            .and_then(|t| parse_jid(t).ok())
            .is_some_and(|t| t.node().is_none() && t.resource().is_none());
        if !to_domain_only {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        match (kind, payload.name(), payload.ns()) {
            (IqType::Get, "query", ns::DISCO_INFO) if payload.attr("node").is_none() => {
                Ok(Some(self.disco_info()))
            }
            (IqType::Get, "query", ns::DISCO_ITEMS) if payload.attr("node").is_none() => {
                Ok(Some(Element::new("query", ns::DISCO_ITEMS)))
            }
            (IqType::Get, "ping", ns::PING) => Ok(None),
            (IqType::Get, "request", NS) => self.request(&from, payload).await.map(Some),
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        }
    }

    /// XEP-0363 §2: identity store/file, the feature, and max-file-size in a XEP-0128 form.
    fn disco_info(&self) -> Element {
        let field = |var: &str, value: &str, hidden: bool| {
            let mut f = Element::new("field", DATA_FORMS).with_attr("var", var);
            if hidden {
                f.set_attr("type", "hidden");
            }
            f.with_child(Element::new("value", DATA_FORMS).with_text(value))
        };
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", self.name.clone()),
        );
        for f in [ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING, NS] {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q.push_child(
            Element::new("x", DATA_FORMS)
                .with_attr("type", "result")
                .with_child(field("FORM_TYPE", NS, true))
                .with_child(field(
                    "max-file-size",
                    &self.config.get().max_file_size.to_string(),
                    false,
                )),
        );
        q
    }

    /// Whether `from` may upload: an account (not a server or service) of the parent host or
    /// of `allowed_hosts`. Remote JIDs reach no further than this check.
    fn may_upload(&self, cfg: &UploadConfig, from: &Jid) -> bool {
        if from.node().is_none() {
            return false;
        }
        let domain = from.domain().as_str();
        if cfg.allowed_hosts.is_empty() {
            domain == self.parent
        } else {
            cfg.allowed_hosts.iter().any(|h| h == domain)
        }
    }

    async fn secret(&self) -> Result<&[u8], StanzaError> {
        self.secret
            .get_or_try_init(|| async {
                match self.stores.secret.get(&self.domain, "").await {
                    Ok(Some(s)) if s.len() >= 32 => return Ok(s),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, service = %self.domain, "upload secret unreadable");
                        return Err(());
                    }
                }
                let s: [u8; 32] = rand::random();
                match self.stores.secret.set(&self.domain, "", Some(&s)).await {
                    Ok(()) => Ok(s.to_vec()),
                    Err(e) => {
                        tracing::warn!(error = %e, service = %self.domain, "upload secret not stored");
                        Err(())
                    }
                }
            })
            .await
            .map(|v| v.as_slice())
            .map_err(|()| err(Condition::InternalServerError, ErrorType::Wait, "storage"))
    }

    /// XEP-0363 §4: a slot, or the §4 / §4.2 errors.
    async fn request(&self, from: &Jid, req: &Element) -> Result<Element, StanzaError> {
        let cfg = self.config.get();
        if !self.may_upload(&cfg, from) {
            return Err(err(
                Condition::Forbidden,
                ErrorType::Auth,
                "only local users may upload",
            ));
        }
        let filename = req.attr("filename").unwrap_or("");
        up::check_filename(filename)
            .map_err(|why| err(Condition::BadRequest, ErrorType::Modify, why))?;
        let size: u64 = req
            .attr("size")
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                err(
                    Condition::BadRequest,
                    ErrorType::Modify,
                    "size must be a positive number of bytes",
                )
            })?;
        let content_type = match req.attr("content-type").map(str::trim) {
            None | Some("") => None,
            Some(ct) => Some(up::normalize_content_type(ct).ok_or_else(|| {
                err(
                    Condition::BadRequest,
                    ErrorType::Modify,
                    "content-type is not a media type",
                )
            })?),
        };
        // XEP-0363 §4.2: too large, with the limit.
        if size > cfg.max_file_size {
            canto_core::metrics::upload_refused("too_large");
            return Err(StanzaError::new(Condition::NotAcceptable)
                .with_type(ErrorType::Modify)
                .with_text(format!(
                    "File too large. The maximum file size is {} bytes",
                    cfg.max_file_size
                ))
                .with_app(Element::new("file-too-large", NS).with_child(
                    Element::new("max-file-size", NS).with_text(cfg.max_file_size.to_string()),
                )));
        }
        let effective_type = content_type.as_deref().unwrap_or(up::DEFAULT_CONTENT_TYPE);
        if !up::type_allowed(effective_type, &cfg.allowed_types) {
            return Err(err(
                Condition::NotAcceptable,
                ErrorType::Modify,
                "this content type is not accepted",
            ));
        }
        let secret = self.secret().await?.to_vec();
        let owner = from.to_bare().to_string();
        let now = up::now();
        let slot = Slot {
            service: self.domain.clone(),
            id: up::new_id(),
            filename: filename.to_string(),
            size,
            content_type,
            expires: now + cfg.slot_lifetime,
            requester: owner.clone(),
        };
        {
            // XEP-0363 §4.2 (quota): stored files and slots not yet expired.
            let _one_at_a_time = self.quota_lock.lock().await;
            let records = self
                .stores
                .files
                .get_all(&self.domain, &owner)
                .await
                .map_err(|_| err(Condition::InternalServerError, ErrorType::Wait, "storage"))?;
            let mut used: u64 = 0;
            for (id, v) in &records {
                match Record::decode(v) {
                    Some(r) if r.counted(now) > 0 => used = used.saturating_add(r.counted(now)),
                    // Expired slots are forgotten here.
                    _ => {
                        let _ = self.stores.files.set(&self.domain, &owner, id, None).await;
                    }
                }
            }
            if used.saturating_add(size) > cfg.quota {
                canto_core::metrics::upload_refused("quota");
                return Err(err(
                    Condition::ResourceConstraint,
                    ErrorType::Wait,
                    &format!(
                        "Quota exceeded: {used} of {} bytes in use; wait for files to expire",
                        cfg.quota
                    ),
                ));
            }
            // Counted until no PUT can still be running on the slot: one that starts just
            // before the slot expires may take 30 s + size / min_upload_rate (the HTTP side's
            // deadline), and must find its record (and the quota) still there.
            let rec = Record::Pending {
                size,
                expires: slot.expires + 30 + size / cfg.min_upload_rate.max(1),
            };
            self.stores
                .files
                .set(&self.domain, &owner, &slot.id, Some(&rec.encode()))
                .await
                .map_err(|_| err(Condition::InternalServerError, ErrorType::Wait, "storage"))?;
        }
        let url = format!(
            "{}/upload/{}/{}",
            self.base,
            slot.id,
            up::encode_path_segment(&slot.filename)
        );
        // XEP-0363 §4 (the slot) and §5 (an Authorization header for the PUT).
        Ok(Element::new("slot", NS)
            .with_child(
                Element::new("put", NS)
                    .with_attr("url", url.clone())
                    .with_child(
                        Element::new("header", NS)
                            .with_attr("name", "Authorization")
                            .with_text(format!("Bearer {}", slot.token(&secret))),
                    ),
            )
            .with_child(Element::new("get", NS).with_attr("url", url)))
    }
}

/// Expires files (the timer) and removes a deleted account's files.
struct Cleaner {
    domains: Vec<String>,
    stores: Stores,
    root: Root,
}

impl Cleaner {
    /// Removes `ROOT/ID` and its record.
    async fn remove(&self, root: &std::path::Path, id: &str, service: &str, owner: &str) {
        if up::valid_id(id) {
            let dir = up::slot_dir(root, id);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, dir = %dir.display(), "upload: cannot remove");
            }
        }
        let _ = self.stores.files.set(service, owner, id, None).await;
    }

    /// One pass over the upload root: files older than the configured age go, with their
    /// records; so do leftovers of PUTs that never finished (no meta, older than a day).
    async fn expire(&self, now: u64) -> usize {
        let cfg = self.root.config.get();
        let root = self.root.get();
        let Ok(mut dir) = tokio::fs::read_dir(&root).await else {
            return 0;
        };
        let mut removed = 0;
        while let Ok(Some(entry)) = dir.next_entry().await {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !up::valid_id(&id) {
                continue;
            }
            let slot = entry.path();
            match tokio::fs::read(slot.join(up::META_FILE)).await.ok() {
                Some(m) => {
                    let Some(meta) = up::Meta::decode(&m) else {
                        continue;
                    };
                    let Some(age) = cfg.expire_secs() else {
                        continue;
                    };
                    if now.saturating_sub(meta.stored) >= age {
                        self.remove(&root, &id, &meta.service, &meta.owner).await;
                        removed += 1;
                    }
                }
                None => {
                    let old = tokio::fs::metadata(&slot)
                        .await
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|d| d.as_secs() > 86_400);
                    if old {
                        let _ = tokio::fs::remove_dir_all(&slot).await;
                    }
                }
            }
        }
        removed
    }
}

#[async_trait]
impl Timer for Cleaner {
    async fn tick(&self, _server: &Arc<canto_core::Server>) {
        let n = self.expire(up::now()).await;
        if n > 0 {
            tracing::info!(files = n, "upload: expired files removed");
        }
    }
}

#[async_trait]
impl SubscriptionHook for Cleaner {
    async fn subscribed(&self, _server: &Arc<canto_core::Server>, _: &BareJid, _: &BareJid) {}

    /// A deleted account's files go with it, on every service.
    async fn account_deleted(&self, _server: &Arc<canto_core::Server>, user: &BareJid) {
        let owner = user.to_string();
        let root = self.root.get();
        for domain in &self.domains {
            let Ok(records) = self.stores.files.get_all(domain, &owner).await else {
                continue;
            };
            for (id, _) in records {
                self.remove(&root, &id, domain, &owner).await;
            }
            let _ = self.stores.files.clear(domain, &owner).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = UploadConfig::default();
        assert_eq!(c.max_file_size, 100 * MIB);
        assert_eq!(c.expire_secs(), Some(7 * 86_400));
        assert_eq!(c.validate(), Ok(()));
        let c = UploadConfig {
            expire_after: 5,
            ..UploadConfig::default()
        };
        assert_eq!(c.expire_secs(), Some(5));
        let c = UploadConfig {
            expire_days: 0,
            ..UploadConfig::default()
        };
        assert_eq!(c.expire_secs(), None);
        for bad in [
            UploadConfig {
                max_file_size: 0,
                ..UploadConfig::default()
            },
            UploadConfig {
                allowed_types: vec!["nonsense".into()],
                ..UploadConfig::default()
            },
            UploadConfig {
                slot_lifetime: 0,
                ..UploadConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let ok = UploadConfig {
            allowed_types: vec!["image/*".into(), "video/mp4".into()],
            ..UploadConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn base_url_follows_external_url_then_listeners() {
        let mut c = canto_core::Config::default();
        c.http.https_listen = vec!["[::]:5281".into()];
        assert_eq!(base_url(&c, "example.org"), "https://example.org:5281");
        c.http.https_listen.clear();
        c.http.listen = vec!["127.0.0.1:5280".into()];
        assert_eq!(base_url(&c, "example.org"), "http://example.org:5280");
        c.http.external_url = "https://files.example.org/".into();
        assert_eq!(base_url(&c, "example.org"), "https://files.example.org");
    }
}

//! A room's configuration (XEP-0045 §10.2, the `muc#roomconfig` form) and what disco#info
//! shows of it (§6.4, `muc#roominfo`).

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;

use crate::pubsub::form::{self, Kind, Submitted};

/// The configuration form's FORM_TYPE (XEP-0045 §15.5.3).
pub const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// The room information form's FORM_TYPE (XEP-0045 §15.5.4).
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`, XEP-0045 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whois {
    /// Semi-anonymous: moderators only.
    Moderators,
    /// Non-anonymous: every occupant.
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AllowPm {
    /// Everyone, visitors too.
    Anyone,
    /// Participants and moderators.
    Participants,
    /// Moderators only.
    Moderators,
    /// Nobody.
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }

    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::None,
            _ => return None,
        })
    }
}

/// One room's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    /// `muc#roomconfig_roomname`
    pub name: String,
    /// `muc#roomconfig_roomdesc`
    pub description: String,
    /// `muc#roomconfig_lang`
    pub lang: String,
    /// `muc#roomconfig_persistentroom`
    pub persistent: bool,
    /// `muc#roomconfig_publicroom`
    pub public: bool,
    /// `muc#roomconfig_membersonly`
    pub members_only: bool,
    /// `muc#roomconfig_moderatedroom`
    pub moderated: bool,
    /// `muc#roomconfig_roomsecret` (empty: no password; `passwordprotectedroom` follows it).
    pub password: String,
    /// `muc#roomconfig_whois`
    pub whois: Whois,
    /// `muc#roomconfig_maxusers`
    pub max_users: usize,
    /// `muc#roomconfig_changesubject`: participants may change the subject.
    pub change_subject: bool,
    /// `muc#roomconfig_allowpm`
    pub allow_pm: AllowPm,
    /// `muc#roomconfig_allowinvites`: members (not only admins) may invite.
    pub allow_invites: bool,
    /// `muc#roomconfig_historylength` (Prosody's field): discussion history kept.
    pub history_length: usize,
    /// `muc#roomconfig_enablearchiving` (Prosody's mod_muc_mam field).
    pub archiving: bool,
    /// `muc#roomconfig_presencebroadcast`: roles whose presence is broadcast.
    pub broadcast: Vec<String>,
}

/// Service limits a configuration must respect.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The largest `maxusers`.
    pub max_users: usize,
    /// The largest `historylength`.
    pub max_history: usize,
    /// The default `historylength`.
    pub default_history: usize,
}

impl RoomConfig {
    /// A new room's configuration (docs/muc.md "Default room configuration").
    pub fn new(bounds: Bounds) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            lang: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            whois: Whois::Moderators,
            max_users: bounds.max_users,
            change_subject: false,
            allow_pm: AllowPm::Anyone,
            allow_invites: false,
            history_length: bounds.default_history.min(bounds.max_history),
            archiving: true,
            broadcast: vec!["moderator".into(), "participant".into(), "visitor".into()],
        }
    }

    /// Whether presence of an occupant with `role` is broadcast.
    pub fn broadcasts(&self, role: &str) -> bool {
        self.broadcast.iter().any(|r| r == role)
    }

    /// The configuration form (XEP-0045 §10.2), of `kind` `form` (to fill) or `submit` (stored).
    pub fn to_form(&self, kind: &str, bounds: Bounds) -> Element {
        let b = |v: bool| vec![if v { "1" } else { "0" }.to_string()];
        let s = |v: &str| vec![v.to_string()];
        let mut x = form::new_form(kind, NS_ROOMCONFIG);
        let max_users = bounds.max_users.to_string();
        let users_options: Vec<String> = [10usize, 20, 30, 50, 100, 200, 500, 1000]
            .iter()
            .filter(|n| **n < bounds.max_users)
            .map(usize::to_string)
            .chain(std::iter::once(max_users))
            .collect();
        let users_refs: Vec<&str> = users_options.iter().map(String::as_str).collect();
        let fields = [
            form::field(
                "muc#roomconfig_roomname",
                "Title",
                Kind::Text,
                &s(&self.name),
            ),
            form::field(
                "muc#roomconfig_roomdesc",
                "Description",
                Kind::Text,
                &s(&self.description),
            ),
            form::field(
                "muc#roomconfig_lang",
                "Language",
                Kind::Text,
                &s(&self.lang),
            ),
            form::field(
                "muc#roomconfig_persistentroom",
                "Persistent (kept when empty)",
                Kind::Boolean,
                &b(self.persistent),
            ),
            form::field(
                "muc#roomconfig_publicroom",
                "Listed in the room directory",
                Kind::Boolean,
                &b(self.public),
            ),
            form::field(
                "muc#roomconfig_membersonly",
                "Members only",
                Kind::Boolean,
                &b(self.members_only),
            ),
            form::field(
                "muc#roomconfig_moderatedroom",
                "Moderated (only participants may speak)",
                Kind::Boolean,
                &b(self.moderated),
            ),
            form::field(
                "muc#roomconfig_passwordprotectedroom",
                "Password protected",
                Kind::Boolean,
                &b(!self.password.is_empty()),
            ),
            text_private("muc#roomconfig_roomsecret", "Password", &self.password),
            form::field(
                "muc#roomconfig_whois",
                "Who may see real JIDs",
                Kind::List(&["moderators", "anyone"]),
                &s(match self.whois {
                    Whois::Moderators => "moderators",
                    Whois::Anyone => "anyone",
                }),
            ),
            form::field(
                "muc#roomconfig_maxusers",
                "Maximum occupants",
                Kind::List(&users_refs),
                &s(&self.max_users.to_string()),
            ),
            form::field(
                "muc#roomconfig_changesubject",
                "Participants may change the subject",
                Kind::Boolean,
                &b(self.change_subject),
            ),
            form::field(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                Kind::List(&["anyone", "participants", "moderators", "none"]),
                &s(self.allow_pm.as_str()),
            ),
            form::field(
                "muc#roomconfig_allowinvites",
                "Members may invite",
                Kind::Boolean,
                &b(self.allow_invites),
            ),
            form::field(
                "muc#roomconfig_historylength",
                &format!(
                    "Messages of discussion history (at most {})",
                    bounds.max_history
                ),
                Kind::Text,
                &s(&self.history_length.to_string()),
            ),
            form::field(
                "muc#roomconfig_enablearchiving",
                "Archive messages (XEP-0313)",
                Kind::Boolean,
                &b(self.archiving),
            ),
            form::field(
                "muc#roomconfig_presencebroadcast",
                "Roles whose presence is broadcast",
                Kind::ListMulti,
                &self.broadcast,
            ),
        ];
        for f in fields {
            x.push_child(f);
        }
        x
    }

    /// Applies a submitted form (XEP-0045 §10.2): fields left out keep their values; unknown
    /// fields are ignored (XEP-0004 §3.4). A value of the wrong type is `not-acceptable`, the
    /// wrong FORM_TYPE `bad-request`; nothing changes then.
    pub fn apply(&self, f: &Submitted, bounds: Bounds) -> Result<RoomConfig, StanzaError> {
        if f.form_type.as_deref().is_some_and(|t| t != NS_ROOMCONFIG) {
            return Err(StanzaError::new(Condition::BadRequest).with_text("unknown FORM_TYPE"));
        }
        let mut c = self.clone();
        let mut protected: Option<bool> = None;
        for (var, values) in &f.fields {
            let bad = || {
                StanzaError::new(Condition::NotAcceptable)
                    .with_text(format!("invalid value for {var}"))
            };
            let boolean = || form::boolean(values).ok_or_else(bad);
            let single = || form::single(values).map(str::to_string).ok_or_else(bad);
            match var.as_str() {
                "muc#roomconfig_roomname" => c.name = bounded(single()?, 1024).ok_or_else(bad)?,
                "muc#roomconfig_roomdesc" => {
                    c.description = bounded(single()?, 4096).ok_or_else(bad)?
                }
                "muc#roomconfig_lang" => c.lang = bounded(single()?, 64).ok_or_else(bad)?,
                "muc#roomconfig_persistentroom" => c.persistent = boolean()?,
                "muc#roomconfig_publicroom" => c.public = boolean()?,
                "muc#roomconfig_membersonly" => c.members_only = boolean()?,
                "muc#roomconfig_moderatedroom" => c.moderated = boolean()?,
                "muc#roomconfig_passwordprotectedroom" => protected = Some(boolean()?),
                "muc#roomconfig_roomsecret" => {
                    c.password = bounded(single()?, 1024).ok_or_else(bad)?
                }
                "muc#roomconfig_whois" => {
                    c.whois = match single()?.as_str() {
                        "moderators" => Whois::Moderators,
                        "anyone" => Whois::Anyone,
                        _ => return Err(bad()),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    let v = single()?;
                    c.max_users = match v.trim() {
                        // "none": no limit of the room's own, the service's applies.
                        "none" | "" => bounds.max_users,
                        n => n.parse::<usize>().map_err(|_| bad())?,
                    };
                    if c.max_users == 0 || c.max_users > bounds.max_users {
                        return Err(bad());
                    }
                }
                "muc#roomconfig_changesubject" => c.change_subject = boolean()?,
                "muc#roomconfig_allowpm" => {
                    c.allow_pm = AllowPm::parse(single()?.trim()).ok_or_else(bad)?
                }
                "muc#roomconfig_allowinvites" => c.allow_invites = boolean()?,
                "muc#roomconfig_historylength" => {
                    let n = single()?.trim().parse::<usize>().map_err(|_| bad())?;
                    if n > bounds.max_history {
                        return Err(bad());
                    }
                    c.history_length = n;
                }
                "muc#roomconfig_enablearchiving" => c.archiving = boolean()?,
                "muc#roomconfig_presencebroadcast" => {
                    const ROLES: &[&str] = &["moderator", "participant", "visitor"];
                    if values.iter().any(|v| !ROLES.contains(&v.as_str())) {
                        return Err(bad());
                    }
                    c.broadcast = values.clone();
                }
                _ => {}
            }
        }
        // `passwordprotectedroom` off clears the password; on without one is not acceptable
        // (there would be no way in).
        match protected {
            Some(false) => c.password.clear(),
            Some(true) if c.password.is_empty() => {
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .with_text("a password-protected room needs a password"));
            }
            _ => {}
        }
        Ok(c)
    }

    /// The features disco#info lists for the configuration (XEP-0045 §6.4, §15.2.2).
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            if self.public {
                "muc_public"
            } else {
                "muc_hidden"
            },
            if self.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if self.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if self.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if self.password.is_empty() {
                "muc_unsecured"
            } else {
                "muc_passwordprotected"
            },
            match self.whois {
                Whois::Moderators => "muc_semianonymous",
                Whois::Anyone => "muc_nonanonymous",
            },
        ]
    }

    /// The `muc#roominfo` form (XEP-0045 §6.4, §15.5.4).
    pub fn roominfo(&self, occupants: usize, subject: &str) -> Element {
        let s = |v: &str| vec![v.to_string()];
        let mut x = form::new_form("result", NS_ROOMINFO);
        for f in [
            form::field(
                "muc#roomconfig_roomname",
                "Title",
                Kind::Text,
                &s(&self.name),
            ),
            form::field(
                "muc#roominfo_description",
                "Description",
                Kind::Text,
                &s(&self.description),
            ),
            form::field("muc#roominfo_subject", "Subject", Kind::Text, &s(subject)),
            form::field(
                "muc#roominfo_occupants",
                "Number of occupants",
                Kind::Text,
                &s(&occupants.to_string()),
            ),
            form::field("muc#roominfo_lang", "Language", Kind::Text, &s(&self.lang)),
            form::field(
                "muc#roominfo_changesubject",
                "Participants may change the subject",
                Kind::Boolean,
                &s(if self.change_subject { "1" } else { "0" }),
            ),
            form::field(
                "muc#maxhistoryfetch",
                "Discussion history sent on join",
                Kind::Text,
                &s(&self.history_length.to_string()),
            ),
            form::field(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                Kind::Text,
                &s(self.allow_pm.as_str()),
            ),
        ] {
            x.push_child(f);
        }
        x
    }

    /// The configuration as stored: the submitted form.
    pub fn to_stored(&self, bounds: Bounds) -> Element {
        self.to_form("submit", bounds)
    }

    /// A stored configuration read back (fields missing or invalid keep the defaults).
    pub fn from_stored(x: &Element, bounds: Bounds) -> RoomConfig {
        let base = RoomConfig::new(bounds);
        let Ok(mut f) = form::parse(x) else {
            return base;
        };
        // A stored configuration may exceed today's bounds (the operator lowered them):
        // clamp rather than refuse.
        for (var, values) in &mut f.fields {
            if var == "muc#roomconfig_maxusers" || var == "muc#roomconfig_historylength" {
                let cap = if var == "muc#roomconfig_maxusers" {
                    bounds.max_users
                } else {
                    bounds.max_history
                };
                if let Some(v) = values.first_mut()
                    && v.parse::<usize>().is_ok_and(|n| n > cap)
                {
                    *v = cap.to_string();
                }
            }
        }
        base.apply(&f, bounds).unwrap_or(base)
    }
}

fn bounded(s: String, max: usize) -> Option<String> {
    (s.len() <= max).then_some(s)
}

/// A `text-private` field (XEP-0004 §3.3), for the room password.
fn text_private(var: &str, label: &str, value: &str) -> Element {
    Element::new("field", form::NS)
        .with_attr("var", var)
        .with_attr("type", "text-private")
        .with_attr("label", label)
        .with_child(Element::new("value", form::NS).with_text(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        max_users: 100,
        max_history: 50,
        default_history: 20,
    };

    fn submit(fields: &[(&str, &[&str])]) -> Submitted {
        Submitted {
            kind: "submit".into(),
            form_type: Some(NS_ROOMCONFIG.into()),
            fields: fields
                .iter()
                .map(|(v, vals)| (v.to_string(), vals.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn a_submitted_form_changes_the_fields_it_names_only() {
        let c = RoomConfig::new(B);
        let n = c
            .apply(
                &submit(&[
                    ("muc#roomconfig_roomname", &["Coven"]),
                    ("muc#roomconfig_membersonly", &["1"]),
                    ("muc#roomconfig_maxusers", &["30"]),
                    ("muc#roomconfig_whois", &["anyone"]),
                ]),
                B,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(n.name, "Coven");
        assert!(n.members_only);
        assert_eq!(n.max_users, 30);
        assert_eq!(n.whois, Whois::Anyone);
        assert_eq!(n.public, c.public);
        assert_eq!(n.history_length, 20);
    }

    #[test]
    fn wrong_values_and_form_types_change_nothing() {
        let c = RoomConfig::new(B);
        for f in [
            submit(&[("muc#roomconfig_maxusers", &["abc"])]),
            submit(&[("muc#roomconfig_maxusers", &["101"])]),
            submit(&[("muc#roomconfig_historylength", &["51"])]),
            submit(&[("muc#roomconfig_persistentroom", &["yes"])]),
            submit(&[("muc#roomconfig_whois", &["everyone"])]),
            submit(&[("muc#roomconfig_passwordprotectedroom", &["1"])]),
        ] {
            let e = c.apply(&f, B).err().map(|e| e.condition);
            assert_eq!(e, Some(Condition::NotAcceptable), "{f:?}");
        }
        let mut wrong = submit(&[]);
        wrong.form_type = Some("urn:other".into());
        assert_eq!(
            c.apply(&wrong, B).err().map(|e| e.condition),
            Some(Condition::BadRequest)
        );
    }

    #[test]
    fn the_stored_form_reads_back_the_same() {
        let mut c = RoomConfig::new(B);
        c.name = "R".into();
        c.password = "s3cret".into();
        c.persistent = true;
        c.allow_pm = AllowPm::Moderators;
        c.history_length = 7;
        let back = RoomConfig::from_stored(&c.to_stored(B), B);
        assert_eq!(back, c);
    }

    #[test]
    fn features_follow_the_configuration() {
        let mut c = RoomConfig::new(B);
        assert!(c.features().contains(&"muc_unsecured"));
        c.password = "x".into();
        c.members_only = true;
        let f = c.features();
        assert!(f.contains(&"muc_passwordprotected") && f.contains(&"muc_membersonly"));
    }
}

//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).

use canto_xml::Element;

use crate::ns;

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name { $($(#[$vmeta])* $variant),* }
        impl $name {
            /// The defined-condition element name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            /// Parses a defined-condition element name.
            pub fn from_name(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }
    };
}

conditions! {
    /// RFC 6120 §4.9.3 stream error conditions.
    StreamCondition {
        /// §4.9.3.1
        BadFormat = "bad-format",
        /// §4.9.3.2
        BadNamespacePrefix = "bad-namespace-prefix",
        /// §4.9.3.3
        Conflict = "conflict",
        /// §4.9.3.4
        ConnectionTimeout = "connection-timeout",
        /// §4.9.3.5
        HostGone = "host-gone",
        /// §4.9.3.6
        HostUnknown = "host-unknown",
        /// §4.9.3.7
        ImproperAddressing = "improper-addressing",
        /// §4.9.3.8
        InternalServerError = "internal-server-error",
        /// §4.9.3.9
        InvalidFrom = "invalid-from",
        /// §4.9.3.10
        InvalidNamespace = "invalid-namespace",
        /// §4.9.3.11
        InvalidXml = "invalid-xml",
        /// §4.9.3.12
        NotAuthorized = "not-authorized",
        /// §4.9.3.13
        NotWellFormed = "not-well-formed",
        /// §4.9.3.14
        PolicyViolation = "policy-violation",
        /// §4.9.3.15
        RemoteConnectionFailed = "remote-connection-failed",
        /// §4.9.3.16
        Reset = "reset",
        /// §4.9.3.17
        ResourceConstraint = "resource-constraint",
        /// §4.9.3.18
        RestrictedXml = "restricted-xml",
        /// §4.9.3.19
        SeeOtherHost = "see-other-host",
        /// §4.9.3.20
        SystemShutdown = "system-shutdown",
        /// §4.9.3.21
        UndefinedCondition = "undefined-condition",
        /// §4.9.3.22
        UnsupportedEncoding = "unsupported-encoding",
        /// §4.9.3.23
        UnsupportedFeature = "unsupported-feature",
        /// §4.9.3.24
        UnsupportedStanzaType = "unsupported-stanza-type",
        /// §4.9.3.25
        UnsupportedVersion = "unsupported-version",
    }
}

conditions! {
    /// RFC 6120 §8.3.3 stanza error conditions.
    Condition {
        /// §8.3.3.1
        BadRequest = "bad-request",
        /// §8.3.3.2
        Conflict = "conflict",
        /// §8.3.3.3
        FeatureNotImplemented = "feature-not-implemented",
        /// §8.3.3.4
        Forbidden = "forbidden",
        /// §8.3.3.5
        Gone = "gone",
        /// §8.3.3.6
        InternalServerError = "internal-server-error",
        /// §8.3.3.7
        ItemNotFound = "item-not-found",
        /// §8.3.3.8
        JidMalformed = "jid-malformed",
        /// §8.3.3.9
        NotAcceptable = "not-acceptable",
        /// §8.3.3.10
        NotAllowed = "not-allowed",
        /// §8.3.3.11
        NotAuthorized = "not-authorized",
        /// §8.3.3.12
        PolicyViolation = "policy-violation",
        /// §8.3.3.13
        RecipientUnavailable = "recipient-unavailable",
        /// §8.3.3.14
        Redirect = "redirect",
        /// §8.3.3.15
        RegistrationRequired = "registration-required",
        /// §8.3.3.16
        RemoteServerNotFound = "remote-server-not-found",
        /// §8.3.3.17
        RemoteServerTimeout = "remote-server-timeout",
        /// §8.3.3.18
        ResourceConstraint = "resource-constraint",
        /// §8.3.3.19
        ServiceUnavailable = "service-unavailable",
        /// §8.3.3.20
        SubscriptionRequired = "subscription-required",
        /// §8.3.3.21
        UndefinedCondition = "undefined-condition",
        /// §8.3.3.22
        UnexpectedRequest = "unexpected-request",
    }
}

/// A stream error, sent as `<stream:error>` before closing the stream (RFC 6120 §4.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition.
    pub condition: StreamCondition,
    /// Optional human-readable text.
    pub text: Option<String>,
    /// Optional application-specific condition (e.g. `<stanza-too-big xmlns='urn:xmpp:errors'/>`).
    pub app: Option<Box<Element>>,
}

impl StreamError {
    /// An error with only a condition.
    pub fn new(condition: StreamCondition) -> StreamError {
        StreamError {
            condition,
            text: None,
            app: None,
        }
    }

    /// Adds descriptive text.
    pub fn with_text(mut self, text: impl Into<String>) -> StreamError {
        self.text = Some(text.into());
        self
    }

    /// Adds an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> StreamError {
        self.app = Some(Box::new(app));
        self
    }

    /// The `<stream:error>` element.
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", ns::STREAMS)
            .with_child(Element::new(self.condition.as_str(), ns::STREAM_ERRORS));
        if let Some(t) = &self.text {
            e.push_child(Element::new("text", ns::STREAM_ERRORS).with_text(t.clone()));
        }
        if let Some(a) = &self.app {
            e.push_child((**a).clone());
        }
        e
    }
}

impl From<canto_xml::XmlError> for StreamError {
    fn from(e: canto_xml::XmlError) -> StreamError {
        use canto_xml::XmlError as X;
        let condition = match e {
            X::NotWellFormed(_) => StreamCondition::NotWellFormed,
            X::RestrictedXml(_) => StreamCondition::RestrictedXml,
            X::UnsupportedEncoding => StreamCondition::UnsupportedEncoding,
            X::BadFormat(_) => StreamCondition::BadFormat,
            X::PolicyViolation(_) => StreamCondition::PolicyViolation,
            _ => StreamCondition::NotWellFormed,
        };
        let mut err = StreamError::new(condition).with_text(e.to_string());
        if let X::PolicyViolation(canto_xml::LimitKind::Bytes) = e {
            // Prosody and XEP-0478 practice: say which limit.
            err = err.with_app(Element::new("stanza-too-big", ns::XMPP_ERRORS));
        }
        err
    }
}

/// RFC 6120 §8.3.2: the error type, which says what the sender may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry.
    Cancel,
    /// Proceed (warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting.
    Wait,
}

impl ErrorType {
    /// The `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

impl Condition {
    /// The error type RFC 6120 §8.3.3 gives for each condition by default.
    pub fn default_type(self) -> ErrorType {
        use Condition as C;
        match self {
            C::BadRequest | C::JidMalformed | C::NotAcceptable | C::PolicyViolation => {
                ErrorType::Modify
            }
            C::Redirect | C::Gone => ErrorType::Cancel,
            C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
                ErrorType::Auth
            }
            C::RecipientUnavailable
            | C::RemoteServerTimeout
            | C::ResourceConstraint
            | C::UnexpectedRequest => ErrorType::Wait,
            _ => ErrorType::Cancel,
        }
    }
}

/// A stanza error (RFC 6120 §8.3): the payload of a `type='error'` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    /// The error type.
    pub kind: ErrorType,
    /// The defined condition.
    pub condition: Condition,
    /// Optional human-readable text.
    pub text: Option<String>,
    /// Optional application-specific condition element.
    pub app: Option<Box<Element>>,
    /// `by`: the entity that generated the error (RFC 6120 §8.3.2).
    pub by: Option<String>,
}

impl StanzaError {
    /// An error with the condition's default type.
    pub fn new(condition: Condition) -> StanzaError {
        StanzaError {
            kind: condition.default_type(),
            condition,
            text: None,
            app: None,
            by: None,
        }
    }

    /// Overrides the error type.
    pub fn with_type(mut self, kind: ErrorType) -> StanzaError {
        self.kind = kind;
        self
    }

    /// Adds descriptive text.
    pub fn with_text(mut self, text: impl Into<String>) -> StanzaError {
        self.text = Some(text.into());
        self
    }

    /// Adds an application-specific condition.
    pub fn with_app(mut self, app: Element) -> StanzaError {
        self.app = Some(Box::new(app));
        self
    }

    /// Sets `by`.
    pub fn with_by(mut self, by: impl Into<String>) -> StanzaError {
        self.by = Some(by.into());
        self
    }

    /// The `<error/>` child element in the given stanza namespace.
    pub fn to_element(&self, stanza_ns: &str) -> Element {
        let mut e = Element::new("error", stanza_ns).with_attr("type", self.kind.as_str());
        if let Some(by) = &self.by {
            e.set_attr("by", by.clone());
        }
        e.push_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            e.push_child(Element::new("text", ns::STANZAS).with_text(t.clone()));
        }
        if let Some(a) = &self.app {
            e.push_child((**a).clone());
        }
        e
    }

    /// Reads an `<error/>` child back (for tests and for routing decisions).
    pub fn from_element(e: &Element) -> Option<StanzaError> {
        let cond = e
            .children()
            .filter(|c| c.ns() == ns::STANZAS && c.name() != "text")
            .find_map(|c| Condition::from_name(c.name()))?;
        let kind = match e.attr("type")? {
            "auth" => ErrorType::Auth,
            "cancel" => ErrorType::Cancel,
            "continue" => ErrorType::Continue,
            "modify" => ErrorType::Modify,
            "wait" => ErrorType::Wait,
            _ => return None,
        };
        Some(StanzaError {
            kind,
            condition: cond,
            text: e.get_child("text", ns::STANZAS).map(|t| t.text()),
            app: e
                .children()
                .find(|c| c.ns() != ns::STANZAS)
                .cloned()
                .map(Box::new),
            by: e.attr("by").map(str::to_string),
        })
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.condition.as_str())?;
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StanzaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_serializes_with_prefix() {
        let e = StreamError::new(StreamCondition::HostUnknown).with_text("nope");
        let s = String::from_utf8(e.to_element().to_bytes_in(ns::CLIENT)).unwrap_or_default();
        assert_eq!(
            s,
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>nope</text></stream:error>"
        );
    }

    #[test]
    fn stanza_error_round_trips() {
        let e = StanzaError::new(Condition::ServiceUnavailable).with_text("x");
        assert_eq!(e.kind, ErrorType::Cancel);
        let back = StanzaError::from_element(&e.to_element(ns::CLIENT));
        assert_eq!(back, Some(e));
        assert_eq!(
            StanzaError::new(Condition::BadRequest).kind,
            ErrorType::Modify
        );
        assert_eq!(StanzaError::new(Condition::Forbidden).kind, ErrorType::Auth);
    }

    #[test]
    fn oversize_maps_to_policy_violation_with_stanza_too_big() {
        let e: StreamError =
            canto_xml::XmlError::PolicyViolation(canto_xml::LimitKind::Bytes).into();
        assert_eq!(e.condition, StreamCondition::PolicyViolation);
        assert!(
            e.app
                .is_some_and(|a| a.is("stanza-too-big", ns::XMPP_ERRORS))
        );
    }
}

//! XEP-0004 data forms as pubsub uses them: node configuration (`pubsub#node_config`),
//! publish-options, subscription options and node meta-data.

use canto_stanza::{Condition, StanzaError};
use canto_xml::Element;

/// The data forms namespace (XEP-0004).
pub const NS: &str = "jabber:x:data";

/// A submitted form: its `type` and its fields in order (`FORM_TYPE` taken out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submitted {
    /// The form's `type` attribute (`submit`, `cancel`, `form`, `result`).
    pub kind: String,
    /// The hidden `FORM_TYPE` field's value, if any.
    pub form_type: Option<String>,
    /// Every other field with a `var`: its values, in order.
    pub fields: Vec<(String, Vec<String>)>,
}

/// Most fields a submitted form may carry (a node configuration has about twenty).
const MAX_FIELDS: usize = 64;
/// Most values one field may carry (roster groups, whitelists).
const MAX_VALUES: usize = 256;

/// Parses `<x xmlns='jabber:x:data'/>`. XEP-0004 §3.2: a field of a submitted form must have a
/// `var`; a form without a type, or of too many fields, is a bad request.
pub fn parse(x: &Element) -> Result<Submitted, StanzaError> {
    if !x.is("x", NS) {
        return Err(bad("not a data form"));
    }
    let kind = x
        .attr("type")
        .ok_or_else(|| bad("a data form needs a type"))?
        .to_string();
    if !matches!(kind.as_str(), "submit" | "cancel" | "form" | "result") {
        return Err(bad("unknown data form type"));
    }
    let mut form = Submitted {
        kind,
        ..Submitted::default()
    };
    for field in x.children().filter(|c| c.is("field", NS)) {
        let Some(var) = field.attr("var") else {
            if form.kind == "submit" {
                return Err(bad("a submitted field needs a var"));
            }
            continue;
        };
        let values: Vec<String> = field
            .children()
            .filter(|c| c.is("value", NS))
            .map(Element::text)
            .collect();
        if values.len() > MAX_VALUES {
            return Err(bad("too many values"));
        }
        if var == "FORM_TYPE" {
            form.form_type = values.into_iter().next();
            continue;
        }
        if form.fields.iter().any(|(v, _)| v == var) {
            return Err(bad("a field is given twice"));
        }
        if form.fields.len() == MAX_FIELDS {
            return Err(bad("too many fields"));
        }
        form.fields.push((var.to_string(), values));
    }
    Ok(form)
}

fn bad(text: &str) -> StanzaError {
    StanzaError::new(Condition::BadRequest).with_text(text)
}

/// What a field offers in a form we send.
pub enum Kind<'a> {
    /// `text-single`
    Text,
    /// `boolean`
    Boolean,
    /// `list-single` with these options.
    List(&'a [&'a str]),
    /// `list-multi`, options free.
    ListMulti,
    /// `jid-multi`
    JidMulti,
    /// `jid-single`
    JidSingle,
    /// `hidden`
    Hidden,
}

/// A form of `kind` (`form`, `result`, `submit`) with a hidden FORM_TYPE.
pub fn new_form(kind: &str, form_type: &str) -> Element {
    Element::new("x", NS).with_attr("type", kind).with_child(
        Element::new("field", NS)
            .with_attr("var", "FORM_TYPE")
            .with_attr("type", "hidden")
            .with_child(Element::new("value", NS).with_text(form_type)),
    )
}

/// One field with its label, type and current values.
pub fn field(var: &str, label: &str, kind: Kind<'_>, values: &[String]) -> Element {
    let type_name = match kind {
        Kind::Text => "text-single",
        Kind::Boolean => "boolean",
        Kind::List(_) => "list-single",
        Kind::ListMulti => "list-multi",
        Kind::JidMulti => "jid-multi",
        Kind::JidSingle => "jid-single",
        Kind::Hidden => "hidden",
    };
    let mut f = Element::new("field", NS)
        .with_attr("var", var)
        .with_attr("type", type_name);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    if let Kind::List(options) = kind {
        for o in options {
            f.push_child(
                Element::new("option", NS)
                    .with_attr("label", *o)
                    .with_child(Element::new("value", NS).with_text(*o)),
            );
        }
    }
    for v in values {
        f.push_child(Element::new("value", NS).with_text(v.clone()));
    }
    f
}

/// XEP-0004 §3.3: a boolean is `0`, `1`, `false` or `true`.
pub fn boolean(values: &[String]) -> Option<bool> {
    match values {
        [v] => match v.trim() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The single value of a single-valued field (an absent value reads as empty).
pub fn single(values: &[String]) -> Option<&str> {
    match values {
        [] => Some(""),
        [v] => Some(v.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(xml: &str) -> Element {
        canto_core::roster::decode_element(xml.as_bytes()).unwrap_or_else(|| panic!("{xml}"))
    }

    #[test]
    fn a_submitted_form_gives_its_fields_and_form_type() {
        let f = parse(&x("<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:t</value></field>\
             <field var='a'><value>1</value><value>2</value></field><field var='b'/></x>"));
        let f = f.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(f.form_type.as_deref(), Some("urn:t"));
        assert_eq!(
            f.fields,
            vec![
                ("a".into(), vec!["1".into(), "2".into()]),
                ("b".into(), vec![])
            ]
        );
    }

    #[test]
    fn malformed_forms_are_bad_requests() {
        for bad in [
            "<x xmlns='jabber:x:data'/>",
            "<x xmlns='jabber:x:data' type='weird'/>",
            "<x xmlns='jabber:x:data' type='submit'><field/></x>",
            "<x xmlns='jabber:x:data' type='submit'><field var='a'/><field var='a'/></x>",
            "<y xmlns='jabber:x:data' type='submit'/>",
        ] {
            let e = parse(&x(bad)).err().map(|e| e.condition);
            assert_eq!(e, Some(Condition::BadRequest), "{bad}");
        }
    }

    #[test]
    fn booleans_take_the_four_spellings_and_nothing_else() {
        let b = |s: &str| boolean(&[s.to_string()]);
        assert_eq!(
            [b("1"), b("true"), b("0"), b("false"), b("yes")],
            [Some(true), Some(true), Some(false), Some(false), None]
        );
        assert_eq!(boolean(&[]), None);
    }
}

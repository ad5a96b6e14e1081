//! A small namespace-aware element tree, the unit the router and modules work on.

use std::fmt;

/// A child of an element: another element or character data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (already unescaped).
    Text(String),
}

/// An XML element with its namespace, attributes and children.
///
/// Attribute names are stored as written for the empty namespace; attributes in the XML namespace
/// are stored as `xml:NAME`. Other namespaced attributes are stored as `{NS}NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Element {
    name: String,
    ns: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    /// A new element with no attributes or children.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: sets an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Builder: appends a child element.
    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: appends text.
    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// The local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI (empty for none).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Whether this element is `{ns}name`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Changes the namespace of this element (used when a stanza moves between stream
    /// namespaces, e.g. `jabber:client` and `jabber:server`).
    pub fn set_ns(&mut self, ns: impl Into<String>) {
        self.ns = ns.into();
    }

    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// All attributes in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of attributes.
    pub fn attr_count(&self) -> usize {
        self.attrs.len()
    }

    /// All child nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// Child elements.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Mutable child elements.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child `{ns}name`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// Mutable access to the first child `{ns}name`.
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|c| c.is(name, ns))
    }

    /// Whether a child `{ns}name` exists.
    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Appends text.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// Removes every child element matching `pred`, returning how many were removed.
    pub fn remove_children(&mut self, mut pred: impl FnMut(&Element) -> bool) -> usize {
        let before = self.children.len();
        self.children.retain(|n| match n {
            Node::Element(e) => !pred(e),
            Node::Text(_) => true,
        });
        before - self.children.len()
    }

    /// Removes all children.
    pub fn clear_children(&mut self) {
        self.children.clear();
    }

    /// The concatenated text children of this element (not of descendants).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serializes this element, declaring its namespace unless it equals `parent_ns`
    /// (e.g. `jabber:client` for a stanza written to a client stream).
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        crate::serialize::write_element(self, out, parent_ns);
    }

    /// Serializes to a fresh buffer with its namespace declared.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, "");
        out
    }

    /// Serializes for a stream whose default namespace is `stream_ns`.
    pub fn to_bytes_in(&self, stream_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, stream_ns);
        out
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_replace_and_remove() {
        let mut e = Element::new("message", "jabber:client").with_attr("to", "a@b");
        e.set_attr("to", "c@d");
        assert_eq!(e.attr("to"), Some("c@d"));
        assert_eq!(e.attr_count(), 1);
        assert_eq!(e.remove_attr("to").as_deref(), Some("c@d"));
        assert_eq!(e.attr("to"), None);
    }

    #[test]
    fn child_lookup_is_namespace_aware() {
        let e = Element::new("iq", "jabber:client")
            .with_child(Element::new("query", "a"))
            .with_child(Element::new("query", "b").with_text("x"));
        assert_eq!(
            e.get_child("query", "b").map(|c| c.text()),
            Some("x".into())
        );
        assert!(e.get_child("query", "c").is_none());
        assert_eq!(e.children().count(), 2);
    }

    #[test]
    fn text_concatenates_adjacent_pushes() {
        let mut e = Element::new("body", "jabber:client");
        e.push_text("ab");
        e.push_text("cd");
        assert_eq!(e.nodes().len(), 1);
        assert_eq!(e.text(), "abcd");
    }

    #[test]
    fn element_size_stays_small() {
        // Every stanza in flight is one of these; keep the header to four words' worth of Vecs.
        assert!(std::mem::size_of::<Element>() <= 96);
    }
}

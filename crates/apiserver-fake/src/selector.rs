//! Label and field selectors, as the API server parses and matches them.
//!
//! Label selectors: `key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`, joined by commas. Field selectors: `path=value`,
//! `path==value`, `path!=value` on dotted JSON paths (`metadata.name`,
//! `metadata.namespace`, `spec.nodeName`), joined by commas.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// A parsed field selector: every `(path, value, equal)` must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, String, bool)>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn set_values(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    /// Parses a label selector; `None` if it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(key.trim().to_string())
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==") {
                LabelRequirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once('=') {
                LabelRequirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, values)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(key.trim().to_string(), set_values(values)?)
            } else if let Some((key, values)) = part.split_once(" in ") {
                LabelRequirement::In(key.trim().to_string(), set_values(values)?)
            } else if part.contains(char::is_whitespace) || part.contains(['(', ')']) {
                return None;
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            requirements.push(requirement);
        }
        Some(Self(requirements))
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::NotExists(key) => label(key).is_none(),
            LabelRequirement::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            LabelRequirement::In(key, values) => {
                label(key).is_some_and(|l| values.iter().any(|v| v == l))
            }
            LabelRequirement::NotIn(key, values) => {
                label(key).is_none_or(|l| values.iter().all(|v| v != l))
            }
        })
    }
}

impl FieldSelector {
    /// Parses a field selector; `None` if it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut terms = Vec::new();
        for part in split_top_level(text) {
            let (path, value, equal) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, v, true)
            } else {
                return None;
            };
            terms.push((path.trim().to_string(), value.trim().to_string(), equal));
        }
        Some(Self(terms))
    }

    /// Whether the object's fields satisfy the selector (a missing field is "").
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, value, equal)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "x", "labels": labels}})
    }

    #[test]
    fn a_not_exists_selector_excludes_labelled_objects() {
        let selector = LabelSelector::parse("!service.kubernetes.io/service-proxy-name").unwrap();
        assert!(selector.matches(&labelled(json!({"app": "web"}))));
        assert!(selector.matches(&json!({"metadata": {"name": "a"}})));
        assert!(!selector.matches(&labelled(
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        )));
    }

    #[test]
    fn label_selectors_combine_equality_and_sets() {
        let selector = LabelSelector::parse("app=web,tier in (a, b),env!=prod,!skip").unwrap();
        assert!(selector.matches(&labelled(json!({"app": "web", "tier": "b"}))));
        assert!(!selector.matches(&labelled(json!({"app": "web", "tier": "c"}))));
        assert!(!selector.matches(&labelled(json!({"app": "web", "tier": "a", "env": "prod"}))));
        assert!(!selector.matches(&labelled(json!({"app": "web", "tier": "a", "skip": ""}))));
        let notin = LabelSelector::parse("tier notin (a)").unwrap();
        assert!(notin.matches(&labelled(json!({}))));
        assert!(!notin.matches(&labelled(json!({"tier": "a"}))));
    }

    #[test]
    fn a_malformed_label_selector_is_refused() {
        assert_eq!(LabelSelector::parse("tier in a"), None);
        assert_eq!(LabelSelector::parse("a b"), None);
    }

    #[test]
    fn field_selectors_match_dotted_paths() {
        let selector = FieldSelector::parse("metadata.name=a,metadata.namespace!=y").unwrap();
        assert!(selector.matches(&labelled(json!({}))));
        assert!(!FieldSelector::parse("metadata.name=b")
            .unwrap()
            .matches(&labelled(json!({}))));
        assert_eq!(FieldSelector::parse("metadata.name"), None);
    }
}

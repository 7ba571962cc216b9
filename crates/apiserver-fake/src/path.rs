//! Request paths of the Kubernetes REST API, parsed into a collection, a namespace and
//! a name.

/// A kind of object the server stores: its API prefix and its plural resource name,
/// e.g. `api/v1` + `services` or `apis/discovery.k8s.io/v1` + `endpointslices`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Collection {
    /// `api/v1` for the core group, `apis/GROUP/VERSION` otherwise.
    pub prefix: String,
    /// The plural resource name (`services`).
    pub plural: String,
}

impl Collection {
    /// The collection of a group (empty for the core group), version and plural.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        let prefix = if group.is_empty() {
            format!("api/{version}")
        } else {
            format!("apis/{group}/{version}")
        };
        Self {
            prefix,
            plural: plural.to_string(),
        }
    }

    /// The `apiVersion` of objects in this collection (`v1`, `discovery.k8s.io/v1`).
    pub fn api_version(&self) -> &str {
        self.prefix
            .strip_prefix("apis/")
            .or_else(|| self.prefix.strip_prefix("api/"))
            .unwrap_or(&self.prefix)
    }

    /// The `kind` of objects in this collection, for the kinds kipvs uses.
    pub fn kind(&self) -> &str {
        match self.plural.as_str() {
            "services" => "Service",
            "endpointslices" => "EndpointSlice",
            "endpoints" => "Endpoints",
            "nodes" => "Node",
            "events" => "Event",
            "namespaces" => "Namespace",
            "pods" => "Pod",
            _ => "Object",
        }
    }
}

/// A parsed request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// Which collection.
    pub collection: Collection,
    /// The namespace, for namespaced paths.
    pub namespace: Option<String>,
    /// The object's name, for paths naming one object.
    pub name: Option<String>,
}

impl ApiPath {
    /// Parses `/api/v1/...` or `/apis/GROUP/VERSION/...`; `None` for anything else
    /// (including subresources).
    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            _ => return None,
        };
        if plural.is_empty() || namespace.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            collection: Collection {
                prefix,
                plural: plural.to_string(),
            },
            namespace: namespace.map(str::to_string),
            name: name.filter(|n| !n.is_empty()).map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collection_namespace_and_object() {
        let p = ApiPath::parse("/api/v1/services").unwrap();
        assert_eq!(p.collection, Collection::new("", "v1", "services"));
        assert_eq!((p.namespace, p.name), (None, None));

        let p = ApiPath::parse("/apis/events.k8s.io/v1/namespaces/x/events/e.1").unwrap();
        assert_eq!(
            p.collection,
            Collection::new("events.k8s.io", "v1", "events")
        );
        assert_eq!(p.collection.api_version(), "events.k8s.io/v1");
        assert_eq!(p.namespace.as_deref(), Some("x"));
        assert_eq!(p.name.as_deref(), Some("e.1"));

        let p = ApiPath::parse("/api/v1/nodes/node-1").unwrap();
        assert_eq!(p.collection.kind(), "Node");
        assert_eq!(p.name.as_deref(), Some("node-1"));

        assert_eq!(ApiPath::parse("/version"), None);
        assert_eq!(ApiPath::parse("/api/v1/namespaces/x/pods/p/status"), None);
    }
}

//! The objects the fake API server holds, their resourceVersions and the history that
//! watches replay. Pure data: no I/O, no clock but the one passed in.
//!
//! As in etcd, one counter numbers every change of every collection. History older
//! than the compaction point is gone: a watch or a list continuation from before it
//! is answered with 410 Gone.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::path::Collection;
use crate::selector::{FieldSelector, LabelSelector};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Replaced or patched.
    Modified,
    /// Deleted.
    Deleted,
}

/// One change, as watches replay it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change made.
    pub rv: u64,
    /// Which collection.
    pub collection: Collection,
    /// Created, modified or deleted.
    pub change: ChangeType,
    /// The object before a modification (to tell selector transitions).
    pub old: Option<Value>,
    /// The object after the change (for a deletion: as it was last).
    pub object: Value,
}

/// Why the store refused a request; maps onto an API status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The object has no `metadata.name` (nor `generateName`).
    NoName,
    /// An object of that name exists already (409).
    AlreadyExists(String),
    /// No object of that name (404).
    NotFound(String),
    /// The resourceVersion in the request is not the current one (409).
    Conflict(String),
}

/// Which objects a request is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only objects in this namespace.
    pub namespace: Option<String>,
    /// Only objects whose labels match.
    pub labels: LabelSelector,
    /// Only objects whose fields match.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether the object passes the filter.
    pub fn matches(&self, object: &Value) -> bool {
        let in_namespace = self.namespace.as_ref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        });
        in_namespace && self.labels.matches(object) && self.fields.matches(object)
    }
}

type Key = (String, String);

/// The store.
#[derive(Debug, Default)]
pub struct Store {
    rv: u64,
    compacted: u64,
    uids: u64,
    objects: BTreeMap<Collection, BTreeMap<Key, Value>>,
    history: Vec<Change>,
}

fn name_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    ensure_object(
        ensure_object(object)
            .entry("metadata")
            .or_insert(Value::Null),
    )
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

impl Store {
    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest(&self) -> u64 {
        self.compacted
    }

    fn key(namespace: Option<&str>, object: &Value) -> Result<Key, StoreError> {
        let name = name_of(object).ok_or(StoreError::NoName)?;
        Ok((namespace.unwrap_or_default().to_string(), name.to_string()))
    }

    /// Gives a nameless object with `generateName` a name.
    fn generate_name(&mut self, object: &mut Value) {
        if name_of(object).is_some() {
            return;
        }
        let prefix = object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(prefix) = prefix {
            self.uids += 1;
            let name = format!("{prefix}{:05x}", self.uids);
            metadata_mut(object).insert("name".into(), Value::String(name));
        }
    }

    /// Stamps an object as the server does: namespace, resourceVersion, and on first
    /// creation a uid and creationTimestamp.
    fn stamp(
        &mut self,
        namespace: Option<&str>,
        object: &mut Value,
        previous: Option<&Value>,
        now: &str,
    ) {
        self.rv += 1;
        let rv = self.rv;
        let uid = previous
            .and_then(|p| p.pointer("/metadata/uid").cloned())
            .unwrap_or_else(|| {
                self.uids += 1;
                Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uids))
            });
        let created = previous
            .and_then(|p| p.pointer("/metadata/creationTimestamp").cloned())
            .unwrap_or_else(|| Value::String(now.to_string()));
        let metadata = metadata_mut(object);
        if let Some(ns) = namespace {
            metadata.insert("namespace".into(), Value::String(ns.to_string()));
        }
        metadata.insert("resourceVersion".into(), Value::String(rv.to_string()));
        metadata.entry("uid").or_insert(uid);
        metadata.entry("creationTimestamp").or_insert(created);
    }

    fn record(
        &mut self,
        collection: &Collection,
        change: ChangeType,
        old: Option<Value>,
        object: Value,
    ) {
        self.history.push(Change {
            rv: self.rv,
            collection: collection.clone(),
            change,
            old,
            object,
        });
    }

    /// Creates an object, or replaces it if `replace_existing`; `check_version` refuses
    /// a replacement whose `metadata.resourceVersion` is set and not current.
    pub fn put(
        &mut self,
        collection: &Collection,
        namespace: Option<&str>,
        mut object: Value,
        mode: PutMode,
        now: &str,
    ) -> Result<Value, StoreError> {
        self.generate_name(&mut object);
        let key = Self::key(namespace, &object)?;
        let previous = self
            .objects
            .get(collection)
            .and_then(|objects| objects.get(&key))
            .cloned();
        match (&previous, mode) {
            (Some(_), PutMode::Create) => return Err(StoreError::AlreadyExists(key.1)),
            (None, PutMode::Replace) => return Err(StoreError::NotFound(key.1)),
            (Some(old), PutMode::Replace) => {
                let asked = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let current = old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if asked.is_some_and(|a| !a.is_empty() && Some(a) != current) {
                    return Err(StoreError::Conflict(key.1));
                }
            }
            _ => {}
        }
        if mode == PutMode::Force {
            // The test handle writes objects as given; only the server stamps versions.
            metadata_mut(&mut object).remove("resourceVersion");
        }
        self.stamp(namespace, &mut object, previous.as_ref(), now);
        self.objects
            .entry(collection.clone())
            .or_default()
            .insert(key, object.clone());
        let change = if previous.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        self.record(collection, change, previous, object.clone());
        Ok(object)
    }

    /// Merge-patches an object; with `create_missing`, a missing object is created
    /// from the patch (server-side apply's behaviour).
    pub fn patch(
        &mut self,
        collection: &Collection,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        create_missing: bool,
        now: &str,
    ) -> Result<Value, StoreError> {
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        let current = self
            .objects
            .get(collection)
            .and_then(|objects| objects.get(&key))
            .cloned();
        let (mut object, mode) = match current {
            Some(object) => (object, PutMode::Replace),
            None if create_missing => (Value::Object(Map::new()), PutMode::Create),
            None => return Err(StoreError::NotFound(name.to_string())),
        };
        merge_patch(&mut object, patch);
        metadata_mut(&mut object).insert("name".into(), Value::String(name.to_string()));
        if mode == PutMode::Replace {
            // A patch applies to the current version unless it names another.
            let asked = patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            if asked.is_none() {
                metadata_mut(&mut object).remove("resourceVersion");
            }
        }
        self.put(collection, namespace, object, mode, now)
    }

    /// Deletes an object; its last state is returned.
    pub fn delete(
        &mut self,
        collection: &Collection,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StoreError> {
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        let mut object = self
            .objects
            .get_mut(collection)
            .and_then(|objects| objects.remove(&key))
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        self.rv += 1;
        let rv = self.rv.to_string();
        metadata_mut(&mut object).insert("resourceVersion".into(), Value::String(rv));
        self.record(collection, ChangeType::Deleted, None, object.clone());
        Ok(object)
    }

    /// One object.
    pub fn get(
        &self,
        collection: &Collection,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&Value> {
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        self.objects.get(collection)?.get(&key)
    }

    /// The objects passing the filter, by namespace and name, starting after the key
    /// `after` (a continuation) and at most `limit` of them; the second value says
    /// whether more remain.
    pub fn list(
        &self,
        collection: &Collection,
        filter: &Filter,
        after: Option<&(String, String)>,
        limit: Option<usize>,
    ) -> (Vec<Value>, bool) {
        let Some(objects) = self.objects.get(collection) else {
            return (Vec::new(), false);
        };
        let mut matching = objects
            .iter()
            .filter(|(key, _)| after.is_none_or(|after| *key > after))
            .filter(|(_, object)| filter.matches(object))
            .map(|(_, object)| object.clone());
        let items: Vec<Value> = match limit {
            Some(limit) => matching.by_ref().take(limit).collect(),
            None => matching.by_ref().collect(),
        };
        let more = matching.next().is_some();
        (items, more)
    }

    /// The changes to a collection after resourceVersion `since`, for a watch that is
    /// already open (compaction does not cut open watches short).
    pub fn changes_after<'a>(
        &'a self,
        collection: &'a Collection,
        since: u64,
    ) -> impl Iterator<Item = &'a Change> + 'a {
        let start = self.history.partition_point(|c| c.rv <= since);
        self.history[start..]
            .iter()
            .filter(move |c| c.collection == *collection)
    }

    /// Compacts history, as etcd does: a watch or list continuation from a
    /// resourceVersion before now is answered with 410 Gone from now on (open watches
    /// go on). Returns the new oldest resourceVersion.
    pub fn compact(&mut self) -> u64 {
        self.rv += 1;
        self.compacted = self.rv;
        self.compacted
    }

    /// Every object of every collection.
    pub fn all(&self, collection: &Collection) -> Vec<Value> {
        self.objects
            .get(collection)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// How [`Store::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// POST: fails if the object exists.
    Create,
    /// PUT: fails if the object is missing or its resourceVersion is stale.
    Replace,
    /// The test handle: creates or replaces, whatever the version says.
    Force,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2025-01-01T00:00:00Z";

    fn services() -> Collection {
        Collection::new("", "v1", "services")
    }

    fn service(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"clusterIP": "10.0.0.1"}})
    }

    #[test]
    fn every_change_gets_a_higher_resource_version() {
        let mut store = Store::default();
        let a = store
            .put(&services(), Some("x"), service("a"), PutMode::Create, NOW)
            .unwrap();
        let b = store
            .put(&services(), Some("x"), service("a"), PutMode::Force, NOW)
            .unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(a["metadata"]["uid"], b["metadata"]["uid"]);
        assert_eq!(b["metadata"]["namespace"], "x");
        store.delete(&services(), Some("x"), "a").unwrap();
        assert_eq!(store.resource_version(), 3);
        let kinds: Vec<ChangeType> = store
            .changes_after(&services(), 1)
            .map(|c| c.change)
            .collect();
        assert_eq!(kinds, [ChangeType::Modified, ChangeType::Deleted]);
    }

    #[test]
    fn create_refuses_an_existing_object_and_replace_a_stale_one() {
        let mut store = Store::default();
        store
            .put(&services(), Some("x"), service("a"), PutMode::Create, NOW)
            .unwrap();
        assert!(matches!(
            store.put(&services(), Some("x"), service("a"), PutMode::Create, NOW),
            Err(StoreError::AlreadyExists(_))
        ));
        let mut stale = service("a");
        stale["metadata"]["resourceVersion"] = json!("0");
        assert!(matches!(
            store.put(&services(), Some("x"), stale, PutMode::Replace, NOW),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn compaction_makes_old_versions_gone() {
        let mut store = Store::default();
        store
            .put(&services(), Some("x"), service("a"), PutMode::Create, NOW)
            .unwrap();
        let oldest = store.compact();
        assert_eq!(oldest, 2);
        assert_eq!(store.oldest(), 2);
        assert_eq!(
            store.changes_after(&services(), 0).count(),
            1,
            "open watches go on"
        );
    }

    #[test]
    fn lists_page_by_key_and_filter() {
        let mut store = Store::default();
        for name in ["a", "b", "c"] {
            store
                .put(&services(), Some("x"), service(name), PutMode::Create, NOW)
                .unwrap();
        }
        let filter = Filter::default();
        let (page, more) = store.list(&services(), &filter, None, Some(2));
        assert_eq!(page.len(), 2);
        assert!(more);
        let after = ("x".to_string(), "b".to_string());
        let (page, more) = store.list(&services(), &filter, Some(&after), Some(2));
        assert_eq!(page[0]["metadata"]["name"], "c");
        assert!(!more);
    }

    #[test]
    fn a_merge_patch_removes_nulls_and_merges_objects() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut target, &json!({"a": null, "b": {"c": 4}}));
        assert_eq!(target, json!({"b": {"c": 4, "d": 3}}));
    }
}

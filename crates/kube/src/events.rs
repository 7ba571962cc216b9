//! Kubernetes Events on Services, for bad annotations and Services kipvs cannot
//! program: `kubectl describe service` then says what is wrong.
//!
//! Built on kube-runtime's events `Recorder` (events.k8s.io/v1, reporting controller
//! `kipvs`, instance the node's name). A warning is posted once per Service, reason and
//! message: the sync loop may report the same problem on every sync, and only a new
//! message (or a recreated Service) posts again, and so does a recurrence after
//! [`EventRecorder::forget`], which the daemon calls when a Service's warnings clear or
//! the Service is deleted. Each posting is a new Event: the
//! `Recorder`'s own series (a PATCH of the last Event with the same reason) would keep
//! the old message, so its cache is not used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};

use crate::source::ObjectKey;

/// The reporting controller named in kipvs' Events.
pub const REPORTING_CONTROLLER: &str = "kipvs";

/// The longest note the Events API accepts (bytes).
const MAX_NOTE: usize = 1024;
/// The longest reason the Events API accepts (bytes).
const MAX_REASON: usize = 128;

/// The Service an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, when known (lets `kubectl describe` tie the Event to this very object).
    pub uid: Option<String>,
}

impl ServiceRef {
    /// A Service by namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
        }
    }

    fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..ObjectReference::default()
        }
    }
}

impl From<&Service> for ServiceRef {
    fn from(service: &Service) -> Self {
        Self {
            namespace: service.namespace().unwrap_or_default(),
            name: service.name_any(),
            uid: service.uid(),
        }
    }
}

impl From<&ObjectKey> for ServiceRef {
    fn from(key: &ObjectKey) -> Self {
        Self::new(key.namespace.clone(), key.name.clone())
    }
}

/// What was last posted for one Service and reason: its uid and message.
type Posted = HashMap<(String, String, String), (Option<String>, String)>;

/// Posts warnings on Services, each once until it changes. Cheap to clone; clones
/// share what was posted.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    posted: Arc<Mutex<Posted>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

/// Cuts a string to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl EventRecorder {
    /// A recorder posting as controller `kipvs`, instance `node_name`.
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance: Some(node_name.into()),
        };
        Self {
            client,
            reporter,
            posted: Arc::default(),
        }
    }

    fn posted(&self) -> MutexGuard<'_, Posted> {
        self.posted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts a Warning Event on the Service, unless the same reason and message were
    /// already posted for it (the same uid). Returns whether it was posted.
    ///
    /// Fails when the API server refuses the Event or cannot be reached; the warning
    /// is then posted again at the next call.
    pub async fn warn(
        &self,
        service: &ServiceRef,
        reason: &str,
        message: &str,
    ) -> Result<bool, kube::Error> {
        let key = (
            service.namespace.clone(),
            service.name.clone(),
            reason.to_string(),
        );
        let value = (service.uid.clone(), message.to_string());
        {
            let mut posted = self.posted();
            if posted.get(&key) == Some(&value) {
                return Ok(false);
            }
            posted.insert(key.clone(), value.clone());
        }
        let event = Event {
            type_: EventType::Warning,
            reason: truncate(reason, MAX_REASON).to_string(),
            note: Some(truncate(message, MAX_NOTE).to_string()),
            action: "Sync".into(),
            secondary: None,
        };
        // A fresh Recorder: a new Event, not a series update carrying the old message.
        let result = Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&event, &service.object_reference())
            .await;
        if let Err(err) = result {
            let mut posted = self.posted();
            if posted.get(&key) == Some(&value) {
                posted.remove(&key);
            }
            return Err(err);
        }
        Ok(true)
    }

    /// Like [`warn`](Self::warn), without waiting: the Event is posted from a task, so
    /// a slow API server never holds up the caller; a failure is logged. Needs a
    /// Tokio runtime.
    pub fn warn_in_background(&self, service: &ServiceRef, reason: &str, message: &str) {
        let (recorder, service) = (self.clone(), service.clone());
        let (reason, message) = (reason.to_string(), message.to_string());
        tokio::spawn(async move {
            if let Err(err) = recorder.warn(&service, &reason, &message).await {
                tracing::warn!(
                    service = %format!("{}/{}", service.namespace, service.name),
                    reason,
                    error = %err,
                    "could not post an Event"
                );
            }
        });
    }

    /// Forgets what was posted for the Service (it was fixed or deleted): a later
    /// warning is posted again.
    pub fn forget(&self, service: &ServiceRef) {
        self.posted().retain(|(namespace, name, _), _| {
            (namespace, name) != (&service.namespace, &service.name)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aéb", 2), "a");
    }
}

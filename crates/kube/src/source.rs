//! What sources of cluster state tell the sync loop, and the state-file source.
//!
//! A source (the Kubernetes watchers, a state file) sends [`ClusterEvent`]s over a
//! channel. A full listing arrives as one `*Reset` event, never as a stream of
//! deletions: a relist or a re-read swaps the whole set at once, so a reconnect can never
//! look like every Service went away. A source that loses its input sends
//! [`ClusterEvent::Degraded`] and nothing else: the kernel keeps what it has.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;

use crate::state_file::{self, ClusterState};

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A change in the cluster, as a source reports it.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// Every Service there is: replaces all that was known.
    ServicesReset(Vec<Service>),
    /// A Service was created or changed.
    ServiceApplied(Box<Service>),
    /// A Service was deleted.
    ServiceDeleted(ObjectKey),
    /// Every EndpointSlice there is: replaces all that was known.
    SlicesReset(Vec<EndpointSlice>),
    /// An EndpointSlice was created or changed.
    SliceApplied(Box<EndpointSlice>),
    /// An EndpointSlice was deleted.
    SliceDeleted(ObjectKey),
    /// A Node was seen (the loop keeps only its own).
    NodeApplied(Box<Node>),
    /// The source cannot currently read the cluster (API server unreachable, state file
    /// invalid); the previous state stays in force. The text says why.
    Degraded(String),
}

/// The events that replay a whole state file.
pub fn replay(state: ClusterState) -> Vec<ClusterEvent> {
    let mut events = Vec::with_capacity(state.nodes.len() + 2);
    events.extend(
        state
            .nodes
            .into_iter()
            .map(|n| ClusterEvent::NodeApplied(Box::new(n))),
    );
    events.push(ClusterEvent::ServicesReset(state.services));
    events.push(ClusterEvent::SlicesReset(state.endpoint_slices));
    events
}

/// Watches a state file: sends its content now and again whenever its modification time
/// or size changes (checked every `poll`); a re-read parses only the parts of the file
/// that changed (see [`state_file::Parser`]). An unreadable or invalid file sends
/// [`ClusterEvent::Degraded`] naming the file and document; the last good content stays
/// in force. Ends when the receiver is dropped.
pub async fn watch_state_file(path: PathBuf, poll: Duration, tx: mpsc::Sender<ClusterEvent>) {
    let mut last_seen: Option<(SystemTime, u64)> = None;
    let mut last_error: Option<String> = None;
    let mut parser = Some(state_file::Parser::default());
    loop {
        let stamp = tokio::fs::metadata(&path)
            .await
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp.is_none() || stamp != last_seen {
            // Parsing a large file takes seconds: off the runtime's threads, so that
            // the sync loop and the servers keep running meanwhile.
            let mut p = parser.take().unwrap_or_default();
            let file = path.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let loaded = p.load(&file);
                (p, loaded)
            })
            .await;
            let loaded = match loaded {
                Ok((p, loaded)) => {
                    parser = Some(p);
                    loaded
                }
                // The parse panicked: say so like any bad file; the next parse starts
                // afresh.
                Err(e) => Err(state_file::StateFileError::Read {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                }),
            };
            let events = match loaded {
                Ok(state) => {
                    last_seen = stamp;
                    last_error = None;
                    for object in &state.skipped {
                        tracing::warn!(
                            file = %path.display(),
                            "{object}: not a Service, EndpointSlice or Node; ignored"
                        );
                    }
                    replay(state)
                }
                Err(err) => {
                    let message = err.to_string();
                    // Say it once per distinct problem, not once per poll.
                    if last_error.as_ref() == Some(&message) {
                        Vec::new()
                    } else {
                        last_error = Some(message.clone());
                        vec![ClusterEvent::Degraded(message)]
                    }
                }
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n";

    async fn next(rx: &mut mpsc::Receiver<ClusterEvent>) -> ClusterEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the watcher is running")
    }

    #[tokio::test]
    async fn a_state_file_is_sent_whole_and_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("kipvs-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.yaml");
        std::fs::write(&path, ONE_SERVICE).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let watcher = tokio::spawn(watch_state_file(
            path.clone(),
            Duration::from_millis(20),
            tx,
        ));

        assert!(matches!(next(&mut rx).await, ClusterEvent::ServicesReset(s) if s.len() == 1));
        assert!(matches!(next(&mut rx).await, ClusterEvent::SlicesReset(s) if s.is_empty()));

        // An invalid file is reported once, and nothing is reset.
        std::fs::write(&path, "kind: Service\nmetadata: {name: [\n").unwrap();
        match next(&mut rx).await {
            ClusterEvent::Degraded(why) => assert!(why.contains("state.yaml"), "{why}"),
            other => panic!("expected Degraded, got {other:?}"),
        }

        // A fixed file is sent again, whole.
        std::fs::write(
            &path,
            format!(
                "{ONE_SERVICE}---\n{}",
                ONE_SERVICE.replace("name: a", "name: b")
            ),
        )
        .unwrap();
        assert!(matches!(next(&mut rx).await, ClusterEvent::ServicesReset(s) if s.len() == 2));
        watcher.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

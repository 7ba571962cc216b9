//! A Kubernetes API server for tests: plain HTTP on 127.0.0.1, enough of the REST API
//! for the real `kube` client (list, watch, get, create, replace, patch, delete) on any
//! collection, with resourceVersions numbered as etcd numbers them.
//!
//! What it is for: testing kipvs' watchers and the `kipvs` binary without a cluster.
//! Tests change objects through the handle while clients watch, ask for bookmarks,
//! make history expire so watches get 410 Gone, stop the server (an API server outage)
//! and start it again on the same port, and read back the Events clients posted.
//!
//! What it must not do: authenticate, validate objects against their schema, or stand
//! in for a real API server anywhere but in tests.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use k8s_openapi::api::core::v1::Service;
//! let mut server = kipvs_apiserver_fake::ApiServer::start().await?;
//! let mut service = Service::default();
//! service.metadata.name = Some("web".into());
//! service.metadata.namespace = Some("default".into());
//! server.apply(&service);
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! server.expire_watches(); // open watches get 410 Gone
//! server.stop().await; // clients see connection refused
//! server.restart().await?; // same port, same objects
//! # Ok(())
//! # }
//! ```

mod path;
mod selector;
mod server;
mod store;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use path::Collection;
use server::{now, with_type, Run, Shared};
use store::PutMode;

/// A running (or stopped) test API server and the handle to its objects.
///
/// Objects and resourceVersions survive [`stop`](Self::stop) and
/// [`restart`](Self::restart), as they would in etcd. Dropping the handle stops the
/// server.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The collection that holds objects of type `K`.
pub fn collection_of<K: k8s_openapi::Resource>() -> Collection {
    Collection::new(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
}

impl ApiServer {
    /// Starts a server on a free port of 127.0.0.1.
    ///
    /// Fails if no port can be bound.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on the given address (port 0: a free port), e.g. on an address
    /// reachable from another network namespace.
    ///
    /// Fails if the address cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let mut server = Self {
            shared: Arc::new(Shared::new()),
            addr,
            running: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(1024)?;
        self.addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let run = Run {
            shared: self.shared.clone(),
            shutdown: stop.clone(),
        };
        let app = axum::Router::new().fallback(server::handle).with_state(run);
        let mut stopped = stop;
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            if let Err(err) = serve.await {
                tracing::warn!(%err, "test API server failed");
            }
        });
        self.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it is serving (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops serving, as an API server outage: open watches end, the listening socket
    /// closes, and new connections are refused until [`restart`](Self::restart).
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let _ = running.shutdown.send(true);
        let abort = running.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), running.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Serves again on the same port, with the same objects and history.
    ///
    /// Fails if the port cannot be bound again.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.listen().await
    }

    /// A kube client configured for this server.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().unwrap_or_default();
        let config = kube::Config::new(url);
        // Building a client from a plain-HTTP config never fails.
        kube::Client::try_from(config)
            .unwrap_or_else(|e| panic!("client for the test API server: {e}"))
    }

    /// A kubeconfig (YAML) pointing at this server, with no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to a file.
    ///
    /// Fails if the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Creates or replaces an object (namespace from its metadata), as a client's
    /// write would: open watches see ADDED or MODIFIED. Returns the stored object,
    /// with its new resourceVersion.
    ///
    /// # Panics
    /// If the object has no name or does not serialize to JSON (a bug in the test).
    pub fn apply<K: k8s_openapi::Resource + Serialize>(&self, object: &K) -> Value {
        let value =
            serde_json::to_value(object).unwrap_or_else(|e| panic!("serialize object: {e}"));
        self.apply_value(&collection_of::<K>(), value)
    }

    /// [`ApiServer::apply`] for each of `objects`, in order.
    ///
    /// # Panics
    /// As [`ApiServer::apply`].
    pub fn apply_all<K: k8s_openapi::Resource + Serialize>(&self, objects: &[K]) {
        for object in objects {
            self.apply(object);
        }
    }

    /// Creates or replaces an untyped object in a collection.
    ///
    /// # Panics
    /// If the object has no name (a bug in the test).
    pub fn apply_value(&self, collection: &Collection, object: Value) -> Value {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .map(str::to_string);
        let stored = self
            .shared
            .store()
            .put(
                collection,
                namespace.as_deref(),
                with_type(collection, object),
                PutMode::Force,
                &now(),
            )
            .unwrap_or_else(|e| panic!("apply: {e:?}"));
        self.shared.changed();
        stored
    }

    /// Deletes an object (`namespace` empty for cluster-scoped kinds); open watches
    /// see DELETED. Returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let namespace = Some(namespace).filter(|ns| !ns.is_empty());
        let deleted = self
            .shared
            .store()
            .delete(&collection_of::<K>(), namespace, name)
            .is_ok();
        if deleted {
            self.shared.changed();
        }
        deleted
    }

    /// One object, if it exists and decodes as `K`.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let namespace = Some(namespace).filter(|ns| !ns.is_empty());
        let value = self
            .shared
            .store()
            .get(&collection_of::<K>(), namespace, name)
            .cloned()?;
        serde_json::from_value(value).ok()
    }

    /// Every object of a kind (that decodes as `K`), by namespace and name.
    pub fn list<K: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<K> {
        let values = self.shared.store().all(&collection_of::<K>());
        values
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// Every events.k8s.io/v1 Event posted so far (what kube-runtime's `Recorder`
    /// writes, including its series updates).
    pub fn events(&self) -> Vec<Event> {
        self.list::<Event>()
    }

    /// Every core v1 Event posted so far.
    pub fn core_events(&self) -> Vec<CoreEvent> {
        self.list::<CoreEvent>()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Compacts history, as etcd does: from now on a watch or list continuation from
    /// an older resourceVersion is answered with 410 Gone (see
    /// [`answer_gone_with_http_status`](Self::answer_gone_with_http_status)). Open
    /// watches go on; they meet the 410 when they reconnect.
    pub fn compact(&self) {
        self.shared.store().compact();
        self.shared.changed();
    }

    /// Compacts history and makes every open watch fail at once: each receives an
    /// `ERROR` event with a 410 Gone Status and ends, as when the API server's watch
    /// cache can no longer serve it. Clients must list again.
    pub fn expire_watches(&self) {
        self.shared.store().compact();
        self.shared.signals.send_modify(|s| s.expire += 1);
    }

    /// How a watch from a too-old resourceVersion is refused: `false` (the default, as
    /// the API server's watch cache does) with a 200 response carrying one `ERROR`
    /// event; `true` with an HTTP 410 response.
    pub fn answer_gone_with_http_status(&self, http_status: bool) {
        self.shared
            .gone_as_http_status
            .store(http_status, Ordering::SeqCst);
    }

    /// Answers every new request with this HTTP status (403 as when RBAC is missing,
    /// 500, 503, ...) until called with `None`. Open watches go on.
    pub fn fail_requests(&self, status: Option<u16>) {
        self.shared
            .failure
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Sends a BOOKMARK with the latest resourceVersion to every open watch that
    /// allowed bookmarks.
    pub fn bookmark(&self) {
        self.shared.signals.send_modify(|s| s.bookmarks += 1);
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Every request served so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(true);
        }
    }
}

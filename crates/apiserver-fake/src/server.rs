//! The HTTP side: list, get, watch, create, replace, patch and delete on any collection,
//! answered as the Kubernetes API server answers them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::path::{ApiPath, Collection};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ChangeType, Filter, PutMode, Store, StoreError};

/// Signals to open watches; each field is a generation counter.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signals {
    /// Bumped on every change of the store.
    pub changes: u64,
    /// Bumped when the test asks for bookmarks.
    pub bookmarks: u64,
    /// Bumped when the test makes every open watch fail with 410 Gone.
    pub expire: u64,
}

/// State that outlives a stop and restart of the server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub signals: watch::Sender<Signals>,
    pub gone_as_http_status: AtomicBool,
    /// When not 0, every request is answered with this HTTP status.
    pub failure: AtomicU16,
    pub open_watches: AtomicUsize,
    pub requests: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            store: Mutex::new(Store::default()),
            signals: watch::Sender::new(Signals::default()),
            gone_as_http_status: AtomicBool::new(false),
            failure: AtomicU16::new(0),
            open_watches: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The store; a panic in another holder does not make it unusable.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every watch to look at the store again.
    pub fn changed(&self) {
        self.signals.send_modify(|s| s.changes += 1);
    }
}

/// The state of one run of the server (between a start and a stop).
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

/// The current time as the API server writes it.
pub(crate) fn now() -> String {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    match serde_json::to_value(now) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn status_response(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (code, axum::Json(status(code, reason, message))).into_response()
}

fn gone_message(asked: u64, oldest: u64) -> String {
    format!("too old resource version: {asked} ({oldest})")
}

fn store_error(err: StoreError) -> Response {
    match err {
        StoreError::NoName => status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "name or generateName is required",
        ),
        StoreError::AlreadyExists(name) => {
            status_response(StatusCode::CONFLICT, "AlreadyExists", format!("\"{name}\" already exists"))
        }
        StoreError::NotFound(name) => {
            status_response(StatusCode::NOT_FOUND, "NotFound", format!("\"{name}\" not found"))
        }
        StoreError::Conflict(name) => status_response(
            StatusCode::CONFLICT,
            "Conflict",
            format!("the object \"{name}\" has been modified; please apply your changes to the latest version"),
        ),
    }
}

fn truthy(value: Option<&String>) -> bool {
    value.is_some_and(|v| v == "true" || v == "1")
}

/// Gives an object the kind and apiVersion of its collection when it lacks them.
pub(crate) fn with_type(collection: &Collection, mut object: Value) -> Value {
    if let Value::Object(map) = &mut object {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(collection.api_version().to_string()));
        map.entry("kind")
            .or_insert_with(|| Value::String(collection.kind().to_string()));
    }
    object
}

/// The one handler: every request is routed by its parsed path.
pub(crate) async fn handle(
    State(run): State<Run>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run.shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {uri}"));
    let failure = run.shared.failure.load(Ordering::SeqCst);
    if let Ok(code) = StatusCode::from_u16(failure) {
        let reason = match code {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            _ => "InternalError",
        };
        let message = format!("{} is refused by the test API server ({code})", uri.path());
        return status_response(code, reason, message);
    }
    let Some(path) = ApiPath::parse(uri.path()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {}", uri.path()),
        );
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let namespace = path.namespace.as_deref();
    match (method, path.name.as_deref()) {
        (Method::GET, Some(name)) => {
            let store = run.shared.store();
            match store.get(&path.collection, namespace, name) {
                Some(object) => axum::Json(object.clone()).into_response(),
                None => store_error(StoreError::NotFound(name.to_string())),
            }
        }
        (Method::GET, None) => {
            let filter = match filter(&path, &query) {
                Ok(filter) => filter,
                Err(response) => return *response,
            };
            if truthy(query.get("watch")) {
                watch_response(&run, path.collection, filter, &query)
            } else {
                list(&run.shared, &path.collection, &filter, &query)
            }
        }
        (Method::POST, None) => match parse_body(&body) {
            Ok(object) => write(
                &run.shared,
                |store| {
                    store.put(
                        &path.collection,
                        namespace,
                        with_type(&path.collection, object),
                        PutMode::Create,
                        &now(),
                    )
                },
                StatusCode::CREATED,
            ),
            Err(response) => *response,
        },
        (Method::PUT, Some(_)) => match parse_body(&body) {
            Ok(object) => write(
                &run.shared,
                |store| {
                    store.put(
                        &path.collection,
                        namespace,
                        with_type(&path.collection, object),
                        PutMode::Replace,
                        &now(),
                    )
                },
                StatusCode::OK,
            ),
            Err(response) => *response,
        },
        (Method::PATCH, Some(name)) => match parse_body(&body) {
            Ok(patch) => {
                let apply = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/apply-patch"));
                write(
                    &run.shared,
                    |store| {
                        store
                            .patch(&path.collection, namespace, name, &patch, apply, &now())
                            .map(|object| with_type(&path.collection, object))
                    },
                    StatusCode::OK,
                )
            }
            Err(response) => *response,
        },
        (Method::DELETE, Some(name)) => write(
            &run.shared,
            |store| store.delete(&path.collection, namespace, name),
            StatusCode::OK,
        ),
        (method, _) => status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        ),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid JSON body: {e}"),
        ))
    })
}

fn write(
    shared: &Shared,
    change: impl FnOnce(&mut Store) -> Result<Value, StoreError>,
    success: StatusCode,
) -> Response {
    let result = change(&mut shared.store());
    match result {
        Ok(object) => {
            shared.changed();
            (success, axum::Json(object)).into_response()
        }
        Err(err) => store_error(err),
    }
}

fn filter(path: &ApiPath, query: &HashMap<String, String>) -> Result<Filter, Box<Response>> {
    let bad = |what: &str, text: &str| {
        Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("unable to parse requirement: invalid {what} selector {text:?}"),
        ))
    };
    let labels = match query.get("labelSelector") {
        Some(text) => LabelSelector::parse(text).ok_or_else(|| bad("label", text))?,
        None => LabelSelector::default(),
    };
    let fields = match query.get("fieldSelector") {
        Some(text) => FieldSelector::parse(text).ok_or_else(|| bad("field", text))?,
        None => FieldSelector::default(),
    };
    Ok(Filter {
        namespace: path.namespace.clone(),
        labels,
        fields,
    })
}

/// A continue token: the list's resourceVersion and the last key served.
fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let mut parts = token.splitn(3, '|');
    let rv = parts.next()?.parse().ok()?;
    let namespace = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    Some((rv, (namespace, name)))
}

fn list(
    shared: &Shared,
    collection: &Collection,
    filter: &Filter,
    query: &HashMap<String, String>,
) -> Response {
    let store = shared.store();
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match parse_continue(token) {
            Some((rv, _)) if rv < store.oldest() => {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Some((rv, after)) => (rv, Some(after)),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                )
            }
        },
        None => (store.resource_version(), None),
    };
    let (items, more) = store.list(collection, filter, after.as_ref(), limit);
    let continue_token = match items.last() {
        Some(last) if more => {
            let namespace = last
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = last
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("{rv}|{namespace}|{name}")
        }
        _ => String::new(),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !continue_token.is_empty() {
        metadata["continue"] = Value::String(continue_token);
    }
    axum::Json(json!({
        "kind": format!("{}List", collection.kind()),
        "apiVersion": collection.api_version(),
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

/// What one watch request asked for.
#[derive(Debug)]
struct WatchRequest {
    collection: Collection,
    filter: Filter,
    /// `None`: start with the current state, as ADDED events.
    since: Option<u64>,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Option<Duration>,
}

fn watch_response(
    run: &Run,
    collection: Collection,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response {
    let send_initial_events = truthy(query.get("sendInitialEvents"));
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if send_initial_events => None,
        Some(text) => match text.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid resource version {text:?}"),
                )
            }
        },
    };
    if let Some(since) = since {
        let oldest = run.shared.store().oldest();
        if since < oldest && run.shared.gone_as_http_status.load(Ordering::SeqCst) {
            return status_response(StatusCode::GONE, "Expired", gone_message(since, oldest));
        }
    }
    let bookmarks = truthy(query.get("allowWatchBookmarks"));
    let request = WatchRequest {
        collection,
        filter,
        since,
        bookmarks,
        initial_events_end: send_initial_events && bookmarks,
        timeout: query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Subscribed now, so that whatever the test does after the response arrives
    // reaches this watch.
    let signals = run.shared.signals.subscribe();
    tokio::spawn(serve_watch(run.clone(), request, signals, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(collection: &Collection, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": collection.kind(), "apiVersion": collection.api_version(), "metadata": metadata}),
    )
}

/// Counts an open watch for as long as it lives.
struct OpenWatch<'a>(&'a AtomicUsize);

impl<'a> OpenWatch<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn gone_event(asked: u64, oldest: u64) -> Bytes {
    line(
        "ERROR",
        &status(StatusCode::GONE, "Expired", gone_message(asked, oldest)),
    )
}

fn changes_after(store: &Store, request: &WatchRequest, last: u64) -> Vec<Bytes> {
    let changes = store.changes_after(&request.collection, last);
    let filter = &request.filter;
    changes
        .filter_map(|change| {
            let now = filter.matches(&change.object);
            let event = match change.change {
                ChangeType::Added => now.then_some("ADDED"),
                ChangeType::Deleted => now.then_some("DELETED"),
                ChangeType::Modified => {
                    let before = change.old.as_ref().is_some_and(|o| filter.matches(o));
                    match (before, now) {
                        (true, true) => Some("MODIFIED"),
                        (false, true) => Some("ADDED"),
                        (true, false) => Some("DELETED"),
                        (false, false) => None,
                    }
                }
            };
            event.map(|e| line(e, &with_type(&request.collection, change.object.clone())))
        })
        .collect()
}

async fn serve_watch(
    run: Run,
    request: WatchRequest,
    mut signals: watch::Receiver<Signals>,
    tx: mpsc::Sender<Bytes>,
) {
    let Run {
        shared,
        mut shutdown,
    } = run;
    let _open = OpenWatch::new(&shared.open_watches);
    let first = *signals.borrow_and_update();
    let mut bookmarks_seen = first.bookmarks;
    let expire_seen = first.expire;
    let deadline = request.timeout.map(|t| tokio::time::Instant::now() + t);

    let start = {
        let store = shared.store();
        match request.since {
            Some(since) if since < store.oldest() => Err(gone_event(since, store.oldest())),
            Some(since) => Ok((since, Vec::new())),
            None => {
                let (items, _) = store.list(&request.collection, &request.filter, None, None);
                let lines = items
                    .iter()
                    .map(|o| line("ADDED", &with_type(&request.collection, o.clone())))
                    .collect();
                Ok((store.resource_version(), lines))
            }
        }
    };
    let (mut last, initial) = match start {
        Ok(start) => start,
        Err(gone) => {
            let _ = tx.send(gone).await;
            return;
        }
    };
    for l in initial {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    if request.initial_events_end
        && tx
            .send(bookmark(&request.collection, last, true))
            .await
            .is_err()
    {
        return;
    }

    loop {
        let signal = *signals.borrow_and_update();
        if signal.expire != expire_seen {
            let oldest = shared.store().oldest();
            let _ = tx.send(gone_event(last, oldest)).await;
            return;
        }
        let lines = {
            let store = shared.store();
            let lines = changes_after(&store, &request, last);
            last = store.resource_version();
            lines
        };
        for l in lines {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if signal.bookmarks != bookmarks_seen {
            bookmarks_seen = signal.bookmarks;
            if request.bookmarks
                && tx
                    .send(bookmark(&request.collection, last, false))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = signals.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
            () = tx.closed() => return,
            () = timeout => return,
        }
    }
}

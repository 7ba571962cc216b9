//! The test API server, driven by the real kube client.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kipvs_apiserver_fake::ApiServer;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};

fn service(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Service {
    let mut service = Service::default();
    service.metadata.name = Some(name.into());
    service.metadata.namespace = Some(namespace.into());
    if !labels.is_empty() {
        service.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    service
}

fn node(name: &str) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(name.into());
    node
}

async fn next<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an item within 5 s")
        .expect("the stream goes on")
}

#[tokio::test]
async fn lists_honour_label_and_field_selectors_and_pages() {
    let server = ApiServer::start().await.unwrap();
    server.apply(&service("a", "one", &[]));
    server.apply(&service(
        "a",
        "two",
        &[("service.kubernetes.io/service-proxy-name", "x")],
    ));
    server.apply(&service("b", "three", &[]));
    server.apply(&node("n1"));
    server.apply(&node("n2"));
    let client = server.client();

    let services: Api<Service> = Api::all(client.clone());
    let listed = services
        .list(&ListParams::default().labels("!service.kubernetes.io/service-proxy-name"))
        .await
        .unwrap();
    let names: Vec<String> = listed.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["one", "three"]);
    assert_eq!(listed.metadata.resource_version.as_deref(), Some("5"));

    let first = services
        .list(&ListParams::default().limit(2))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    let rest = services
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.metadata.continue_, None);

    let in_b: Api<Service> = Api::namespaced(client.clone(), "b");
    assert_eq!(
        in_b.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    let nodes: Api<Node> = Api::all(client);
    let listed = nodes
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "n2");
}

#[tokio::test]
async fn a_watch_sees_changes_and_bookmarks_after_its_resource_version() {
    let server = ApiServer::start().await.unwrap();
    server.apply(&service("a", "one", &[]));
    let services: Api<Service> = Api::all(server.client());
    let rv = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.apply(&service("a", "two", &[]));

    let mut stream = services
        .watch(&WatchParams::default().labels("!skip"), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.name_any(), "two"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    // A label change out of the selector is a deletion for this watch.
    server.apply(&service("a", "one", &[("skip", "")]));
    match next(&mut stream).await.unwrap() {
        WatchEvent::Deleted(s) => assert_eq!(s.name_any(), "one"),
        other => panic!("expected DELETED, got {other:?}"),
    }
    assert!(server.delete::<Service>("a", "two"));
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        WatchEvent::Deleted(_)
    ));
    server.bookmark();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            )
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_watches_get_410_as_an_event_or_as_the_status() {
    let server = ApiServer::start().await.unwrap();
    server.apply(&node("n1"));
    let slices: Api<EndpointSlice> = Api::all(server.client());
    let rv = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut open = slices
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    server.expire_watches();
    match next(&mut open).await.unwrap() {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected ERROR, got {other:?}"),
    }

    // After a compaction a new watch from the old version fails the same way...
    let mut again = slices
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut again).await.unwrap(), WatchEvent::Error(s) if s.code == 410));
    // ...or, on demand, with the HTTP status.
    server.answer_gone_with_http_status(true);
    match slices.watch(&WatchParams::default(), &rv).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 410),
        Ok(_) => panic!("expected HTTP 410"),
        Err(other) => panic!("expected HTTP 410, got {other}"),
    }
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_restarts_on_the_same_port() {
    let mut server = ApiServer::start().await.unwrap();
    server.apply(&service("a", "one", &[]));
    let services: Api<Service> = Api::all(server.client());
    let rv = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = services
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let addr = server.addr();

    server.stop().await;
    // The open watch ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await;
    assert!(matches!(ended, Ok(Ok(None)) | Ok(Err(_))), "{ended:?}");
    assert!(services.list(&ListParams::default()).await.is_err());

    server.apply(&service("a", "two", &[]));
    server.restart().await.unwrap();
    assert_eq!(server.addr(), addr);
    let listed = services.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
}

#[tokio::test]
async fn core_events_posted_by_a_client_can_be_read_back() {
    let server = ApiServer::start().await.unwrap();
    let events: Api<CoreEvent> = Api::namespaced(server.client(), "a");
    let mut event = CoreEvent::default();
    event.metadata.generate_name = Some("one.".into());
    event.reason = Some("Testing".into());
    events.create(&PostParams::default(), &event).await.unwrap();
    let posted = server.core_events();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].reason.as_deref(), Some("Testing"));
    assert_eq!(posted[0].metadata.namespace.as_deref(), Some("a"));
}

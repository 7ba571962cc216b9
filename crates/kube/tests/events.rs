//! Events on Services and the client from a kubeconfig, against the test API server.

use k8s_openapi::api::core::v1::Service;
use kipvs_apiserver_fake::ApiServer;
use kipvs_kube::client::client;
use kipvs_kube::events::{EventRecorder, ServiceRef};
use kube::api::ListParams;
use kube::Api;

fn web() -> ServiceRef {
    ServiceRef {
        namespace: "ns".into(),
        name: "web".into(),
        uid: Some("00000000-0000-4000-8000-000000000001".into()),
    }
}

#[tokio::test]
async fn a_warning_is_posted_once_until_its_message_changes() {
    let server = ApiServer::start().await.unwrap();
    let recorder = EventRecorder::new(server.client(), "node-1");

    let message = "unknown scheduler \"fastest\"; using rr";
    assert!(recorder
        .warn(&web(), "InvalidScheduler", message)
        .await
        .unwrap());
    assert!(!recorder
        .warn(&web(), "InvalidScheduler", message)
        .await
        .unwrap());
    assert!(!recorder
        .warn(&web(), "InvalidScheduler", message)
        .await
        .unwrap());

    let events = server.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("InvalidScheduler"));
    assert_eq!(event.note.as_deref(), Some(message));
    assert_eq!(event.reporting_controller.as_deref(), Some("kipvs"));
    assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
    assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
    let regarding = event.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Service"));
    assert_eq!(regarding.name.as_deref(), Some("web"));
    assert_eq!(regarding.uid, web().uid);

    // A new message is a new Event, with that message.
    let other = "unknown scheduler \"slowest\"; using rr";
    assert!(recorder
        .warn(&web(), "InvalidScheduler", other)
        .await
        .unwrap());
    let notes: Vec<Option<String>> = server.events().into_iter().map(|e| e.note).collect();
    assert!(notes.contains(&Some(other.to_string())), "{notes:?}");
    assert_eq!(notes.len(), 2);

    // Once the Service is fixed and forgotten, the same problem is reported again.
    recorder.forget(&web());
    assert!(recorder
        .warn(&web(), "InvalidScheduler", other)
        .await
        .unwrap());
    assert_eq!(server.events().len(), 3);
}

#[tokio::test]
async fn a_warning_that_could_not_be_posted_is_posted_at_the_next_call() {
    let mut server = ApiServer::start().await.unwrap();
    let recorder = EventRecorder::new(server.client(), "node-1");
    server.stop().await;
    assert!(recorder
        .warn(&web(), "InvalidScheduler", "m")
        .await
        .is_err());
    server.restart().await.unwrap();
    assert!(recorder
        .warn(&web(), "InvalidScheduler", "m")
        .await
        .unwrap());
    assert_eq!(server.events().len(), 1);
}

#[tokio::test]
async fn a_warning_in_the_background_is_posted_without_waiting() {
    let server = ApiServer::start().await.unwrap();
    let recorder = EventRecorder::new(server.client(), "node-1");
    recorder.warn_in_background(&web(), "InvalidScheduler", "m");
    recorder.warn_in_background(&web(), "InvalidScheduler", "m");
    for _ in 0..100 {
        if !server.events().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(server.events().len(), 1);
}

#[tokio::test]
async fn a_kubeconfig_written_by_the_test_server_reaches_it() {
    let server = ApiServer::start().await.unwrap();
    let mut service = Service::default();
    service.metadata.name = Some("web".into());
    service.metadata.namespace = Some("ns".into());
    server.apply(&service);

    let dir = std::env::temp_dir().join(format!("kipvs-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let client = client(Some(&path), None).await.unwrap();
    let services: Api<Service> = Api::all(client);
    assert_eq!(
        services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Typed calls and pub/sub (feature `typed`) over real loopback sockets: round trips, and every
//! decode failure reported with the type that failed.

mod common;

use std::time::Duration;

use common::mesh::isolated_mesh;
use serde::{Deserialize, Serialize, Serializer};
use starling::prelude::*;
use tokio::time::timeout;

async fn pair() -> (Node, Node) {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let open = |name: &str| {
        NodeBuilder::new(key.clone())
            .name(name)
            .group(mesh.0)
            .port(mesh.1)
            .beacon_interval(Duration::from_millis(300))
            .open()
    };
    (open("server").await.unwrap(), open("client").await.unwrap())
}

const CALL: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f32,
    samples: Vec<u16>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    sensor: String,
    mean: f32,
}

fn summarise(r: Reading) -> Summary {
    let mean = r.samples.iter().map(|&s| f32::from(s)).sum::<f32>() / r.samples.len().max(1) as f32;
    Summary { sensor: r.sensor, mean }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_call_round_trips_by_name_and_by_id() {
    let (server, client) = pair().await;
    server.serve_typed("summarise", summarise).await.unwrap();
    server.serve_typed_async("double", |x: u64| async move { x * 2 }).await.unwrap();
    let req = Reading { sensor: "k".into(), celsius: 21.5, samples: vec![1, 2, 3, 6] };
    let got: Summary = timeout(LIMIT, client.call_typed("server", "summarise", &req, CALL)).await.unwrap().unwrap();
    assert_eq!(got, Summary { sensor: "k".into(), mean: 3.0 });
    let got = timeout(LIMIT, client.call_typed::<_, u64>(server.id(), "double", &21u64, CALL)).await.unwrap();
    assert_eq!(got.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_does_not_decode_is_an_error_naming_the_type() {
    let (server, client) = pair().await;
    // Answers with one byte: too short for a Summary (a string and an f32).
    server.serve("summarise", |_| async { Ok(vec![5]) }).await.unwrap();
    let req = Reading { sensor: "k".into(), celsius: 0.0, samples: vec![] };
    let err =
        timeout(LIMIT, client.call_typed::<_, Summary>("server", "summarise", &req, CALL)).await.unwrap().unwrap_err();
    let Error::Decode(e) = &err else { panic!("a decode error, not {err:?}") };
    assert!(e.type_name.ends_with("Summary"), "{e:?}");
    assert_eq!(e.payload, [5]);
    let text = err.to_string();
    assert!(text.contains("the reply to `summarise` from 'server'") && text.contains("Summary"), "{text}");

    // Trailing bytes mean another type was sent: an error too, not a silent truncation.
    server.serve("two", |_| async { Ok(vec![1, 2]) }).await.unwrap();
    let err = client.call_typed::<_, u8>("server", "two", &(), CALL).await.unwrap_err();
    assert!(
        matches!(err, Error::Decode(ref e) if e.type_name == "u8" && e.problem.contains("1 bytes left over")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_decode_is_answered_with_the_type_it_needed() {
    let (server, client) = pair().await;
    server.serve_typed("summarise", summarise).await.unwrap();
    let err =
        timeout(LIMIT, client.call_typed::<_, Summary>("server", "summarise", &7u8, CALL)).await.unwrap().unwrap_err();
    let Error::Call(CallError::Remote(bytes)) = &err else { panic!("a remote error, not {err:?}") };
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("the request to `summarise`") && text.contains("Reading"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_subscription_decodes_and_reports_what_does_not_decode() {
    let (publisher, subscriber) = pair().await;
    let mut sub = subscriber.subscribe_typed::<Reading>("home/+/reading").await.unwrap();
    // Wait until the publisher knows the subscription, so reliable publications wait for it.
    let end = std::time::Instant::now() + CALL;
    while !publisher.peer_details().await.unwrap().iter().any(|p| p.filters.iter().any(|f| f == "home/+/reading")) {
        assert!(std::time::Instant::now() < end, "the publisher should learn the subscription");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let good = Reading { sensor: "kitchen".into(), celsius: 21.5, samples: vec![215, 216] };
    publisher.publish_typed("home/kitchen/reading", &good).reliable().await.unwrap();
    publisher.publish("home/hall/reading", vec![0xff, 0xff, 0xff]).reliable().await.unwrap();
    publisher.publish_typed("home/porch/reading", &good).reliable().await.unwrap();

    let m = next(&mut sub).await.unwrap();
    assert_eq!((m.topic.as_str(), &m.value, m.from), ("home/kitchen/reading", &good, publisher.id()));
    assert!(m.seq.is_some(), "reliable messages carry their sequence number");
    let e = next(&mut sub).await.unwrap_err();
    assert!(e.type_name.ends_with("Reading") && e.payload == [0xff; 3], "{e:?}");
    assert!(e.to_string().contains("the message on home/hall/reading from"), "{e}");
    let m = next(&mut sub).await.unwrap();
    assert_eq!(m.topic, "home/porch/reading", "the message after a bad one still arrives");
}

async fn next(sub: &mut TypedSubscription<Reading>) -> Result<TypedMessage<Reading>, DecodeError> {
    timeout(Duration::from_secs(5), sub.recv()).await.expect("a message in time").expect("open")
}

/// A value serde cannot encode.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("never"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_encoded_fails_naming_its_type() {
    let (server, client) = pair().await;
    let err = server.publish_typed("t", &Unencodable).await.unwrap_err();
    assert!(matches!(err, Error::Encode { type_name, .. } if type_name.ends_with("Unencodable")), "{err:?}");
    let err = client.call_typed::<_, ()>("server", "m", &Unencodable, CALL).await.unwrap_err();
    assert!(err.to_string().contains("Unencodable cannot be encoded"), "{err}");
}

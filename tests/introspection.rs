//! Real sockets: what a monitor asks of the runtime (`Node::peer_details`, built-in `$info`).

use std::time::Duration;

use starling::runtime::{NodeBuilder, INFO_METHOD};
use starling_integration::{eventually, isolated_mesh, random_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_details_and_info_show_filters_methods_and_rtt() {
    let (group, port) = isolated_mesh();
    let key = random_key();
    let open = |name: &'static str| {
        NodeBuilder::new(key.clone()).name(name).group(group).port(port).beacon_interval(Duration::from_millis(300))
    };
    let watcher = open("watcher").open().await.unwrap();
    let sensor = open("sensor").open().await.unwrap();
    let _sub = sensor.subscribe_many(&["home/+/temp", "cmd/#"]).await.unwrap();
    sensor.serve("relay.set", |_| async { Ok(Vec::new()) }).await.unwrap();

    let found = eventually(Duration::from_secs(5), || async {
        let d = watcher.peer_details().await.unwrap();
        d.len() == 1 && d[0].filters == ["home/+/temp", "cmd/#"]
    })
    .await;
    assert!(found, "filters announced before anything was published: {:?}", watcher.peer_details().await);
    assert_eq!(watcher.peer_details().await.unwrap()[0].info.name, "sensor");

    let info = watcher.call(sensor.id(), INFO_METHOD, Vec::new(), Duration::from_secs(2)).await.unwrap();
    let info = String::from_utf8(info).unwrap();
    assert!(info.contains("method relay.set\n") && info.contains("method $stats\n"), "{info}");
    // The call measured the round trip (from the acknowledgement of the request, which may
    // arrive just after the response).
    let measured = eventually(Duration::from_secs(2), || async {
        watcher.peer_details().await.unwrap()[0].rtt.is_some_and(|r| r < Duration::from_secs(1))
    })
    .await;
    assert!(measured, "{:?}", watcher.peer_details().await.unwrap()[0].rtt);
    let back = sensor.call(watcher.id(), INFO_METHOD, Vec::new(), Duration::from_secs(2)).await.unwrap();
    let back = String::from_utf8(back).unwrap();
    assert!(back.contains(&format!("peer {} rtt_us ", sensor.id())), "{back}");
}

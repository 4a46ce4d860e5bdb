//! The getters a monitor uses (`starling watch`): a peer's announced filters, its RTT, and the
//! methods a node serves, in the deterministic simulator.

mod common;

use std::time::Duration;

use common::sim::Sim;
use starling::Instant;

#[test]
fn peer_filters_rtt_and_served_methods_are_visible() {
    let mut sim = Sim::new(0x0b5e_7001);
    let (watcher, sensor) = (sim.add_node("watcher"), sim.add_node("sensor"));
    sim.start(watcher);
    sim.start(sensor);
    sim.subscribe(sensor, "home/+/temp");
    sim.subscribe(sensor, "cmd/#");
    sim.serve(sensor, &["relay.set"], |_| Some(Ok(b"ok".to_vec())));
    sim.run_until(Instant::from_micros(2_000_000));

    let sensor_id = sim.id(sensor);
    let filters: Vec<String> =
        sim.node(watcher).peer_filters(sensor_id).expect("sensor is up").iter().map(|f| f.to_string()).collect();
    assert_eq!(filters, ["home/+/temp", "cmd/#"], "filters are known before anything is published");
    assert!(sim.node(watcher).peer_filters(sim.id(watcher)).is_none(), "not a peer of itself");
    assert_eq!(sim.node(sensor).served_methods().collect::<Vec<_>>(), ["relay.set"]);

    // First contact's freshness challenge and echo are a round trip (PROTOCOL.md §3.4).
    let first = sim.node(watcher).peer_rtt(sensor_id).expect("measured by the freshness check");
    assert!(first < Duration::from_millis(100), "{first:?}");
    sim.call(watcher, sensor_id, "relay.set", b"1", Duration::from_secs(2));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.call_results(watcher).len(), 1);
    let rtt = sim.node(watcher).peer_rtt(sensor_id).expect("measured by the call");
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
}

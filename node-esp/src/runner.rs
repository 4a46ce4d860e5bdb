//! The driver loop: receive or time out, hand it to the core, send what the core emits, store
//! the leases it asks for, and give requests and reading times to the [`Device`]. No protocol
//! or application logic lives here.

use alloc::boxed::Box;
use alloc::vec;
use core::net::SocketAddr;
use core::time::Duration;
use embassy_futures::select::{select, Either};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpAddress, IpEndpoint, Stack};
use embassy_time::Timer;
use esp_hal::rng::Trng;
use esp_storage::FlashStorage;
use log::{error, info, warn};
use starling::wire::MAX_DATAGRAM;
use starling::{Boot, Destination, Event, Instant, Node, NodeId, PersistedState};
use starling_device::app::{stats_text, STATS_METHOD};
use starling_device::lease::{ephemeral_boot, resume_boot, LeaseLog};
use starling_device::{core_config, Device, Membership, METHODS};

use crate::backoff;
use crate::board::EspBoard;

/// The core's clock: microseconds since boot.
pub fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

fn to_embassy(t: Instant) -> embassy_time::Instant {
    embassy_time::Instant::from_micros(t.as_micros())
}

/// Starts the core from the lease log (or without stored state if flash fails) and runs the
/// mesh until a `reboot` call restarts the chip.
pub async fn run(
    stack: Stack<'static>,
    mut device: Device,
    mut board: EspBoard,
    mut lease: Option<LeaseLog<FlashStorage<'static>>>,
    prev: Option<PersistedState>,
    trng: Trng,
    seed: [u8; 32],
) -> ! {
    // Only the small fields are copied: in identity mode the allowlist exists twice on the heap
    // (the device's provisioning and the core's), not three times.
    let prov = device.provisioning();
    let (name, group, port) = (prov.name.clone(), prov.group, prov.port);
    let membership = prov.membership.clone();
    let config = core_config(&name, seed, prov.beacon_interval, membership.is_identity());
    let fresh_id = NodeId::from_u64(u64::from(trng.random()) << 32 | u64::from(trng.random()));
    // Identity mode fixes the node id (derived from the public key); PSK mode keeps the stored one.
    let ids = BootIds { fixed: membership.fixed_node_id(), fresh: fresh_id, random_epoch: trng.random() };
    let boot = start_boot(&mut lease, prev, ids, config.lease_block);

    info!("waiting for an IPv4 address (DHCP)");
    let mut waited = 0u32;
    while let Either::Second(()) = select(stack.wait_config_up(), Timer::after_secs(30)).await {
        waited += 30;
        warn!("still no IPv4 address after {waited} s (Wi-Fi down, or no DHCP server on this network)");
    }
    if let Some(c) = stack.config_v4() {
        info!("address {}", c.address);
    }
    let mut attempt = 0;
    while let Err(e) = stack.join_multicast_group(IpAddress::Ipv4(group)) {
        let wait = backoff(attempt, Duration::from_secs(1), Duration::from_secs(60));
        error!("joining multicast group {} failed: {e:?}; retrying in {} s", group, wait.as_secs());
        attempt += 1;
        Timer::after_millis(wait.as_millis() as u64).await;
    }

    let rx_meta = Box::leak(Box::new([PacketMetadata::EMPTY; 4]));
    let tx_meta = Box::leak(Box::new([PacketMetadata::EMPTY; 4]));
    let rx_buf = vec![0u8; 4 * 1536].leak();
    let tx_buf = vec![0u8; 2 * 1536].leak();
    let mut socket = UdpSocket::new(stack, rx_meta, rx_buf, tx_meta, tx_buf);
    if let Err(e) = socket.bind(port) {
        error!("binding UDP port {}: {e:?}; restarting in 10 s", port);
        Timer::after_secs(10).await;
        esp_hal::system::software_reset();
    }

    let created = match membership {
        Membership::Psk(key) => Node::new(config, &key, boot, now()),
        Membership::Identity { identity, allowlist } => {
            info!("identity mode: public key {}, network {:?}", identity.public(), allowlist.network);
            Node::new_identity(config, identity, allowlist, boot, now())
        }
    };
    let mut node = match created {
        Ok(n) => n,
        Err(e) => {
            // Cannot happen with a validated blob; say so instead of looping silently.
            error!("node configuration refused: {e}; restarting in 10 s");
            Timer::after_secs(10).await;
            esp_hal::system::software_reset();
        }
    };
    for m in METHODS.iter().chain([&STATS_METHOD]) {
        if let Err(e) = node.serve(m) {
            error!("serving {m}: {e}");
        }
    }
    info!("on the mesh as {} ({}), epoch {}", name, node.id(), node.epoch());

    let group_addr = group;
    let group = IpEndpoint::new(IpAddress::Ipv4(group_addr), port);
    let mut rx = vec![0u8; 1536];
    let mut tx = vec![0u8; MAX_DATAGRAM];
    let mut lease_attempt = 0u32;
    let mut lease_retry_at = Instant::ZERO;
    let mut lonely_warn_at = now() + Duration::from_secs(30);
    let mut lonely_attempt = 0u32;
    let mut send_failures = 0u64;
    let mut send_warn_at = Instant::ZERO;
    loop {
        let t = now();
        for r in device.poll_readings(t, &mut board) {
            if let Err(e) = node.publish(&r.topic, &r.payload) {
                warn!("publishing {}: {e}", r.topic);
            }
        }
        // Outputs in the order the core documents: lease, datagrams, events; events may queue
        // responses, so go round until nothing is left (bounded: each round drains the queues).
        for _ in 0..8 {
            if let Some(state) = node.poll_lease() {
                match lease.as_mut() {
                    Some(log) if t >= lease_retry_at => match log.store(&state) {
                        Ok(()) => {
                            node.handle_lease_stored(state.lease_end);
                            lease_attempt = 0;
                        }
                        Err(e) => {
                            let wait = backoff(lease_attempt, Duration::from_secs(1), Duration::from_secs(60));
                            error!("storing the lease failed: {e}; sending pauses, retrying in {} s", wait.as_secs());
                            lease_attempt += 1;
                            lease_retry_at = t + wait;
                            node.handle_lease_failed();
                        }
                    },
                    Some(_) => node.handle_lease_failed(),
                    // Ephemeral boot: the lease already covers every packet number.
                    None => node.handle_lease_stored(state.lease_end),
                }
            }
            let mut sent_any = false;
            while let Ok(Some(transmit)) = node.poll_transmit(t, &mut tx) {
                sent_any = true;
                let to = match transmit.destination {
                    Destination::Multicast => group,
                    Destination::Unicast(SocketAddr::V4(addr)) => IpEndpoint::from(addr),
                    Destination::Unicast(addr) => {
                        warn!("dropping a datagram to {addr}: this firmware speaks IPv4 only");
                        continue;
                    }
                };
                if let Err(e) = socket.send_to(&tx[..transmit.len], to).await {
                    // While Wi-Fi is down every send fails: say so once per 30 s, with a count.
                    send_failures += 1;
                    if t >= send_warn_at {
                        warn!("sending to {to} failed: {e:?} ({send_failures} sends failed so far)");
                        send_warn_at = t + Duration::from_secs(30);
                    }
                }
            }
            let mut had_event = false;
            while let Some(event) = node.poll_event() {
                had_event = true;
                handle_event(&mut node, &mut device, &mut board, t, event);
            }
            if !sent_any && !had_event {
                break;
            }
        }
        if device.reboot_due(t) {
            info!("rebooting on request");
            Timer::after_millis(50).await;
            esp_hal::system::software_reset();
        }
        if t >= lonely_warn_at {
            if node.peers().next().is_none() {
                warn!(
                    "no other node heard on {}:{}: is multicast blocked on this Wi-Fi (client isolation, \
                     IGMP snooping) or is no other node up? Still publishing and serving.",
                    group_addr, port
                );
            }
            lonely_attempt += 1;
            lonely_warn_at = t + backoff(lonely_attempt, Duration::from_secs(30), Duration::from_secs(600));
        }

        let mut deadline = device.poll_timeout().min(lonely_warn_at);
        if let Some(c) = node.poll_timeout() {
            deadline = deadline.min(c);
        }
        if lease_retry_at > t && node.has_lease_request() {
            deadline = deadline.min(lease_retry_at);
        }
        match select(socket.recv_from(&mut rx), Timer::at(to_embassy(deadline))).await {
            Either::First(Ok((len, meta))) => {
                node.handle_datagram(now(), SocketAddr::from(meta.endpoint), &rx[..len]);
            }
            Either::First(Err(e)) => warn!("receiving: {e:?}"),
            Either::Second(()) => node.handle_timeout(now()),
        }
    }
}

/// The ids a boot may take: the one identity mode fixes, else a fresh random one; and a random
/// epoch for an identity that boots without its lease log.
struct BootIds {
    fixed: Option<NodeId>,
    fresh: NodeId,
    random_epoch: u32,
}

fn start_boot(
    lease: &mut Option<LeaseLog<FlashStorage<'static>>>,
    prev: Option<PersistedState>,
    ids: BootIds,
    block: u64,
) -> Boot {
    let ephemeral = || ephemeral_boot(ids.fixed, ids.fresh, ids.random_epoch);
    let Some(log) = lease.as_mut() else {
        return ephemeral();
    };
    match resume_boot(prev, ids.fixed, ids.fresh, block) {
        Ok((boot, state)) => match log.store(&state) {
            Ok(()) => boot,
            Err(e) => {
                error!(
                    "storing the boot lease failed: {e}; running without stored state (safe: a fresh node id, or \
                     fresh identity-mode keys; peers see a restart)"
                );
                *lease = None;
                ephemeral()
            }
        },
        Err(e) => {
            error!("stored state unusable: {e}; running without stored state");
            *lease = None;
            ephemeral()
        }
    }
}

fn handle_event(node: &mut Node, device: &mut Device, board: &mut EspBoard, now: Instant, event: Event) {
    match event {
        Event::Request { from, call_id, method, payload } => {
            let reply = if method == STATS_METHOD {
                Ok(stats_text(node.stats()).into_bytes())
            } else {
                device.handle_request(now, &method, &payload, board)
            };
            match &reply {
                Ok(_) => info!("call {method} from {from}: ok"),
                Err(e) => warn!("call {method} from {from}: {}", core::str::from_utf8(e).unwrap_or("error")),
            }
            node.respond(now, from, call_id, reply.as_deref().map_err(|e| e.as_slice()));
        }
        Event::PeerUp(p) => info!("peer up: {} ({})", p.name, p.id),
        Event::PeerRestarted(p) => info!("peer restarted: {} ({}), epoch {}", p.name, p.id, p.epoch),
        Event::PeerDown { id, reason } => info!("peer down: {id} ({reason:?})"),
        Event::NodeIdConflict { addr } => {
            error!("another device at {addr} sends with this node's id (cloned flash?); erase the lease partition")
        }
        _ => {}
    }
}

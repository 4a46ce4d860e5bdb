//! The two UDP sockets of a host node: one bound to the group to receive multicast, one bound to
//! an ephemeral unicast port that sends everything, so peers learn an address they can answer.

use std::format;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::string::String;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::Error;

/// Resolves `--interface` text: an IPv4 address (`127.0.0.1`) or an interface name (`lo`,
/// `wlan0`) with an IPv4 address.
pub fn resolve_interface(text: &str) -> Result<Ipv4Addr, String> {
    let ifaces = if_addrs::get_if_addrs().map_err(|e| format!("cannot list network interfaces: {e}"));
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        // 0.0.0.0 lets the kernel choose; any other address must be one of this machine's.
        let Ok(ifaces) = ifaces else { return Ok(addr) };
        if addr.is_unspecified() || ifaces.iter().any(|i| i.ip() == IpAddr::V4(addr)) {
            return Ok(addr);
        }
        let mut have: std::vec::Vec<String> = ifaces
            .iter()
            .filter_map(|i| match i.ip() {
                IpAddr::V4(v4) => Some(format!("{v4} ({})", i.name)),
                IpAddr::V6(_) => None,
            })
            .collect();
        have.sort();
        return Err(format!("no interface of this machine has the address {addr}; give one of: {}", have.join(", ")));
    }
    let ifaces = ifaces?;
    let mut names: std::vec::Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    names.sort();
    names.dedup();
    ifaces
        .iter()
        .find_map(|i| match i.ip() {
            IpAddr::V4(v4) if i.name == text => Some(v4),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "no interface named '{text}' with an IPv4 address; give an IPv4 address or one of: {}",
                names.join(", ")
            )
        })
}

/// Receive buffer asked of the kernel for each socket.
const RECV_BUFFER: usize = 4 << 20;

pub(crate) struct Sockets {
    pub multicast: UdpSocket,
    pub unicast: UdpSocket,
    pub group: SocketAddr,
}

fn sock_err(action: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Socket { action, source }
}

impl Sockets {
    pub fn open(group: Ipv4Addr, port: u16, interface: Ipv4Addr, ttl: u32) -> Result<Sockets, Error> {
        if !group.is_multicast() {
            return Err(Error::Socket {
                action: format!("using group {group}"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a multicast address (224.0.0.0/4)"),
            });
        }
        let m =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(sock_err("creating socket".into()))?;
        m.set_reuse_address(true).map_err(sock_err("setting SO_REUSEADDR".into()))?;
        #[cfg(unix)]
        m.set_reuse_port(true).map_err(sock_err("setting SO_REUSEPORT".into()))?;
        // Bound to the group address, the socket sees only this group's traffic on the port.
        let bind = SocketAddrV4::new(group, port);
        m.bind(&bind.into()).map_err(sock_err(format!("binding {bind}")))?;
        m.join_multicast_v4(&group, &interface)
            .map_err(sock_err(format!("joining group {group} on interface {interface}")))?;
        #[cfg(target_os = "linux")]
        m.set_multicast_all_v4(false).map_err(sock_err("setting IP_MULTICAST_ALL".into()))?;
        m.set_nonblocking(true).map_err(sock_err("setting non-blocking".into()))?;
        // Bursts of small datagrams overflow the default receive buffer; ask for more (the kernel
        // caps it at net.core.rmem_max, which is fine: this is a best-effort improvement).
        let _ = m.set_recv_buffer_size(RECV_BUFFER);

        let u =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(sock_err("creating socket".into()))?;
        let ubind = SocketAddrV4::new(interface, 0);
        u.bind(&ubind.into()).map_err(sock_err(format!("binding {ubind}")))?;
        // Without IP_MULTICAST_IF the group traffic follows the default route instead.
        u.set_multicast_if_v4(&interface).map_err(sock_err(format!("selecting interface {interface}")))?;
        u.set_multicast_loop_v4(true).map_err(sock_err("enabling multicast loopback".into()))?;
        u.set_multicast_ttl_v4(ttl).map_err(sock_err("setting multicast TTL".into()))?;
        u.set_nonblocking(true).map_err(sock_err("setting non-blocking".into()))?;
        let _ = u.set_recv_buffer_size(RECV_BUFFER);

        let to_tokio = |s: Socket| UdpSocket::from_std(StdUdpSocket::from(s));
        Ok(Sockets {
            multicast: to_tokio(m).map_err(sock_err("registering socket with tokio".into()))?,
            unicast: to_tokio(u).map_err(sock_err("registering socket with tokio".into()))?,
            group: SocketAddr::V4(bind),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.unicast.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

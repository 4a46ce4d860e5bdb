//! Batched datagram I/O, a driver concern only: the core still makes and takes datagrams one by
//! one. On Linux a run of same-size datagrams to one destination leaves as one GSO send
//! (`UDP_SEGMENT`), all the sends of one drain share a `sendmmsg`, and one `recvmmsg` drains many
//! datagrams, GRO-coalesced runs included (`UDP_GRO`). Where the kernel lacks one of these, or
//! refuses GSO on first use (EIO/EINVAL), that path falls back, once and for the socket's life,
//! to one datagram per call; other systems always use one datagram per call.
//!
//! Why our own calls and not quinn-udp: it sends one `sendmsg` per transmit (no `sendmmsg`), so a
//! drain of mixed frames, small records and acknowledgements to several peers, costs one call per
//! datagram (179 send calls against 7 for the 255 datagrams of the tests below), and its GSO and
//! `recvmmsg`/GRO paths measured no faster than these in the bench.

use std::net::SocketAddr;
use std::vec::Vec;
use std::{io, vec};

use tokio::net::UdpSocket;

use crate::wire::MAX_DATAGRAM;

/// Datagrams collected from one drain of the core before they are sent: 55 of them carry a
/// 64 KiB message, so one batch holds it whole.
const TX_DATAGRAMS: usize = 64;
/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: an IPv4 datagram's payload limit, less a margin.
const GSO_MAX_BYTES: usize = 65_000;
/// Datagrams (or GRO-coalesced runs) taken by one receive call.
const RX_SLOTS_GRO: usize = 16;
/// Datagrams taken by one receive call without GRO.
const RX_SLOTS_PLAIN: usize = 32;
/// A receive slot when GRO is on: a coalesced run is at most one 64 KiB IP datagram.
const RX_SLOT_GRO: usize = 1 << 16;
/// A receive slot without GRO: one byte more than any valid frame, so oversized datagrams are
/// seen as such (and refused by the core) rather than silently cut to a valid length.
const RX_SLOT_PLAIN: usize = MAX_DATAGRAM + 1;

/// Which batched calls a socket may use. Starts from what the kernel offers (see [`probe`](Self::probe)); a
/// path the kernel refuses at run time is switched off here for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offload {
    /// Segmentation offload on send (`UDP_SEGMENT`).
    pub gso: bool,
    /// Receive coalescing (`UDP_GRO`), switched on for the socket.
    pub gro: bool,
    /// `sendmmsg`/`recvmmsg`.
    pub mmsg: bool,
}

impl Offload {
    /// One datagram per call, nothing batched.
    pub const PLAIN: Offload = Offload { gso: false, gro: false, mmsg: false };

    /// What the kernel offers for `socket`; turns GRO on for it when it can.
    pub fn probe(socket: &UdpSocket) -> Offload {
        imp::probe(socket)
    }
}

/// Where one datagram of a [`TxBatch`] goes and where it lies in the batch's buffer.
#[derive(Debug, Clone, Copy)]
struct TxItem {
    dest: SocketAddr,
    start: usize,
    len: usize,
}

/// Datagrams waiting to leave, packed back to back in one buffer so that a run of them can be
/// handed to the kernel as one GSO buffer.
pub(crate) struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    items: Vec<TxItem>,
    /// The sends planned from `items`, kept to reuse its allocation.
    sends: Vec<TxSend>,
}

/// What sending a batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendReport {
    /// Datagrams the kernel refused.
    pub failed: u64,
    /// System calls that sent something (for tests and measurements).
    pub calls: u64,
}

impl TxBatch {
    pub fn new() -> TxBatch {
        TxBatch {
            buf: vec![0; TX_DATAGRAMS * MAX_DATAGRAM],
            used: 0,
            items: Vec::with_capacity(TX_DATAGRAMS),
            sends: Vec::with_capacity(TX_DATAGRAMS),
        }
    }

    /// Room for one more datagram of up to [`MAX_DATAGRAM`] bytes, or `None` when the batch is
    /// full and must be sent first.
    pub fn room(&mut self) -> Option<&mut [u8]> {
        if self.items.len() >= TX_DATAGRAMS || self.buf.len() - self.used < MAX_DATAGRAM {
            return None;
        }
        Some(&mut self.buf[self.used..self.used + MAX_DATAGRAM])
    }

    /// Takes the datagram just written into [`room`](Self::room): its first `len` bytes go to `dest`.
    pub fn push(&mut self, dest: SocketAddr, len: usize) {
        let len = len.min(MAX_DATAGRAM).min(self.buf.len() - self.used);
        self.items.push(TxItem { dest, start: self.used, len });
        self.used += len;
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    fn clear(&mut self) {
        self.items.clear();
        self.used = 0;
    }

    /// Splits the datagrams from `first` on into sends: with `gso`, each run to one destination
    /// whose datagrams all have the first one's size (the last may be shorter) becomes one send.
    fn plan(&self, first: usize, gso: bool, out: &mut Vec<TxSend>) {
        out.clear();
        let mut i = first;
        while i < self.items.len() {
            let head = self.items[i];
            let (mut j, mut end) = (i + 1, head.start + head.len);
            if gso {
                while j < self.items.len() && j - i < GSO_MAX_SEGMENTS {
                    let next = self.items[j];
                    let fits =
                        next.dest == head.dest && next.len <= head.len && end + next.len - head.start <= GSO_MAX_BYTES;
                    if !fits {
                        break;
                    }
                    end += next.len;
                    j += 1;
                    if next.len < head.len {
                        break; // a shorter datagram ends a run
                    }
                }
            }
            let segment = if j - i > 1 { head.len } else { 0 };
            out.push(TxSend { dest: head.dest, start: head.start, end, segment, first_item: i, items: j - i });
            i = j;
        }
    }
}

/// One send call's worth of a batch: a single datagram, or a GSO run of `items` datagrams of
/// `segment` bytes each (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxSend {
    dest: SocketAddr,
    start: usize,
    end: usize,
    /// GSO segment size; 0 for a single datagram.
    segment: usize,
    first_item: usize,
    items: usize,
}

/// Sends every datagram of `batch` on `socket` in as few calls as `offload` allows, then empties
/// the batch. A refused GSO send switches GSO off in `offload` and goes out again datagram by
/// datagram; other refusals are counted and logged, never retried.
pub(crate) async fn send(socket: &UdpSocket, offload: &mut Offload, batch: &mut TxBatch) -> SendReport {
    let mut report = SendReport::default();
    if batch.items.is_empty() {
        return report;
    }
    let mut sends = std::mem::take(&mut batch.sends);
    batch.plan(0, offload.gso, &mut sends);
    let mut next = 0;
    // Each turn sends something, skips a refused send, waits for room or switches a path off
    // (at most twice): bounded by the number of datagrams.
    let mut turns = 4 * batch.items.len() + 8;
    while next < sends.len() {
        if turns == 0 {
            let left: usize = sends[next..].iter().map(|s| s.items).sum();
            report.failed += left as u64;
            tracing::warn!(datagrams = left, "send gave up: the socket made no progress");
            break;
        }
        turns -= 1;
        let mmsg = offload.mmsg;
        match socket.try_io(tokio::io::Interest::WRITABLE, || imp::send(socket, &batch.buf, &sends[next..], mmsg)) {
            Ok(n) => {
                report.calls += 1;
                next += n.clamp(1, sends.len() - next);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    tracing::warn!("send failed: {e}");
                    report.failed += sends[next..].iter().map(|s| s.items as u64).sum::<u64>();
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if imp::is_unsupported(&e) && offload.mmsg => {
                tracing::info!("sendmmsg unavailable ({e}): one send call per datagram from now on");
                offload.mmsg = false;
            }
            Err(e) if imp::is_gso_refusal(&e) && sends[next].segment != 0 => {
                tracing::info!("segmentation offload refused ({e}): sending datagram by datagram from now on");
                offload.gso = false;
                let from = sends[next].first_item;
                batch.plan(from, false, &mut sends);
                next = 0;
            }
            Err(e) => {
                let s = sends[next];
                report.failed += s.items as u64;
                tracing::warn!(dest = %s.dest, datagrams = s.items, "send failed: {e}");
                next += 1;
            }
        }
    }
    batch.clear();
    batch.sends = sends;
    report
}

/// Where one received datagram (or coalesced run) lies in an [`RxBatch`].
#[derive(Debug, Clone, Copy)]
struct RxMeta {
    from: SocketAddr,
    /// Its offset in the batch's buffer.
    start: usize,
    len: usize,
    /// Size of each datagram of a coalesced run (the last may be shorter); `len` if not one.
    stride: usize,
}

/// Room for what one receive call takes, and what it took. One call can take hundreds of
/// datagrams (coalesced runs), more than the driver hands to the core in one turn: the rest waits
/// here for the next turn, and no new call is made until it has been handed out.
pub(crate) struct RxBatch {
    buf: Vec<u8>,
    slot: usize,
    slots: usize,
    got: Vec<RxMeta>,
    /// The first datagram not yet handed out: an index into `got` and an offset into its run.
    next: (usize, usize),
    /// Slots offered to the next call: doubles while calls fill them and falls back when they
    /// do not, so a lone datagram costs little more than a plain `recvmsg` and a burst soon gets
    /// every slot.
    offer: usize,
}

impl RxBatch {
    /// Slots sized for `offload`: whole coalesced runs when GRO is on.
    pub fn new(offload: Offload) -> RxBatch {
        let (slot, slots) = match (offload.gro, offload.mmsg) {
            (true, true) => (RX_SLOT_GRO, RX_SLOTS_GRO),
            (true, false) => (RX_SLOT_GRO, 1),
            (false, true) => (RX_SLOT_PLAIN, RX_SLOTS_PLAIN),
            (false, false) => (RX_SLOT_PLAIN, 1),
        };
        RxBatch { buf: vec![0; slot * slots], slot, slots, got: Vec::with_capacity(slots), next: (0, 0), offer: 2 }
    }

    /// True when every datagram taken has been handed out by [`drain`](Self::drain).
    pub fn is_drained(&self) -> bool {
        self.next.0 >= self.got.len()
    }

    /// Reads what `socket` holds now, in one call and without waiting: the number of datagrams
    /// taken (a coalesced run counts as its datagrams), or `WouldBlock` when there is none.
    /// Datagrams not yet [drained](Self::drain) are dropped: drain first.
    pub fn recv(&mut self, socket: &UdpSocket, offload: &mut Offload) -> io::Result<usize> {
        self.got.clear();
        self.next = (0, 0);
        let mmsg = offload.mmsg && self.slots > 1;
        let offer = self.offer.clamp(1, self.slots);
        let r = socket.try_io(tokio::io::Interest::READABLE, || {
            imp::recv(socket, &mut self.buf, self.slot, offer, mmsg, &mut self.got)
        });
        if let Ok(count) = r {
            self.offer = if count >= offer { offer * 2 } else { count * 2 }.clamp(2, self.slots.max(2));
        }
        match r {
            Err(e) if imp::is_unsupported(&e) && offload.mmsg => {
                tracing::info!("recvmmsg unavailable ({e}): one receive call per datagram from now on");
                offload.mmsg = false;
                Err(io::ErrorKind::Interrupted.into())
            }
            Err(e) => Err(e),
            Ok(_) => Ok(self.got.iter().map(|m| if m.len == 0 { 1 } else { m.len.div_ceil(m.stride) }).sum()),
        }
    }

    /// Hands up to `limit` datagrams taken by [`recv`](Self::recv) and not yet handed out to
    /// `each`, one by one, with their sender; returns how many it handed.
    pub fn drain(&mut self, limit: usize, mut each: impl FnMut(SocketAddr, &[u8])) -> usize {
        let mut handed = 0;
        while handed < limit {
            let (i, off) = self.next;
            let Some(m) = self.got.get(i) else { break };
            let end = (m.start + m.len).min(self.buf.len());
            let data = &self.buf[m.start.min(end)..end];
            let stride = m.stride.clamp(1, data.len().max(1));
            let d = &data[off.min(data.len())..(off + stride).min(data.len())];
            each(m.from, d);
            handed += 1;
            // Past a run's end (an empty datagram counts as one), go on with the next one.
            self.next = if off + stride >= data.len() { (i + 1, 0) } else { (i, off + stride) };
        }
        handed
    }
}

#[cfg(target_os = "linux")]
mod imp {
    //! The Linux calls. Every buffer handed to the kernel lives on this stack frame or in the
    //! caller's batch for the whole call; nothing the kernel returns is trusted beyond its length.

    use std::io;
    use std::mem::{self, MaybeUninit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;
    use std::vec::Vec;

    use tokio::net::UdpSocket;

    use super::{Offload, RxMeta, TxSend};

    /// Sends handed to one `sendmmsg`.
    const MMSG: usize = 32;
    /// Receive slots handed to one `recvmmsg`, at most.
    const RMMSG: usize = 32;

    /// Control-message room, aligned as `cmsghdr` wants: one `u16` or `int` option.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Cmsg([u8; 32]);

    pub(super) fn probe(socket: &UdpSocket) -> Offload {
        let fd = socket.as_raw_fd();
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writes of the sizes given.
        let gso = unsafe {
            libc::getsockopt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, (&mut value as *mut libc::c_int).cast(), &mut len)
        } == 0;
        let on: libc::c_int = 1;
        // SAFETY: a valid int option.
        let gro = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&on as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        Offload { gso, gro, mmsg: true }
    }

    pub(super) fn is_unsupported(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::ENOSYS)
    }

    /// What Linux answers when the device or route cannot segment (see `udp_send_skb`).
    pub(super) fn is_gso_refusal(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
    }

    /// Fills `hdr` to send `s` from `buf`: the address, the data and, for a GSO run, its segment size.
    fn prepare(
        s: &TxSend,
        buf: &[u8],
        addr: &socket2::SockAddr,
        iov: &mut libc::iovec,
        cmsg: &mut Cmsg,
        hdr: &mut libc::msghdr,
    ) {
        let data = &buf[s.start..s.end];
        iov.iov_base = data.as_ptr() as *mut libc::c_void;
        iov.iov_len = data.len();
        hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr.len();
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        hdr.msg_flags = 0;
        if s.segment == 0 {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            return;
        }
        let segment = s.segment as u16;
        // SAFETY: cmsg is aligned for cmsghdr and large enough for CMSG_SPACE(2); CMSG_FIRSTHDR
        // sees the length set just before and returns a pointer into it.
        unsafe {
            let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
            hdr.msg_control = cmsg.0.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(hdr);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        }
    }

    /// Sends a prefix of `sends` in one call; returns how many went.
    pub(super) fn send(socket: &UdpSocket, buf: &[u8], sends: &[TxSend], mmsg: bool) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let n = if mmsg { sends.len().min(MMSG) } else { 1 };
        if n == 1 {
            // The common case of a lone datagram or GSO run: one sendmsg, nothing more to set up.
            let addr = socket2::SockAddr::from(sends[0].dest);
            // SAFETY (zeroed): plain C structs for which all-zero is a valid value.
            let (mut iov, mut hdr): (libc::iovec, libc::msghdr) = unsafe { (mem::zeroed(), mem::zeroed()) };
            let mut cmsg = Cmsg([0; 32]);
            prepare(&sends[0], buf, &addr, &mut iov, &mut cmsg, &mut hdr);
            // SAFETY: the header points at buffers that outlive the call.
            let r = unsafe { libc::sendmsg(fd, &hdr, 0) };
            return if r < 0 { Err(io::Error::last_os_error()) } else { Ok(1) };
        }
        let addrs: Vec<socket2::SockAddr> = sends[..n].iter().map(|s| socket2::SockAddr::from(s.dest)).collect();
        // SAFETY (all zeroed): plain C structs for which all-zero is a valid value.
        let mut iovs: [libc::iovec; MMSG] = unsafe { mem::zeroed() };
        let mut cmsgs = [Cmsg([0; 32]); MMSG];
        let mut hdrs: [libc::mmsghdr; MMSG] = unsafe { mem::zeroed() };
        for i in 0..n {
            prepare(&sends[i], buf, &addrs[i], &mut iovs[i], &mut cmsgs[i], &mut hdrs[i].msg_hdr);
        }
        // SAFETY: n headers, each pointing at buffers that outlive the call.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Receives into `slots` slots of `slot` bytes of `buf`, in one call.
    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
        slot: usize,
        slots: usize,
        mmsg: bool,
        got: &mut Vec<RxMeta>,
    ) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let n = if mmsg { slots.min(RMMSG) } else { 1 }.min(buf.len() / slot.max(1));
        // Only the n entries used are initialized: the kernel writes names and control messages,
        // and this runs for every wake-up, a lone small datagram's included.
        let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; RMMSG];
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; RMMSG];
        let mut cmsgs = [const { MaybeUninit::<Cmsg>::uninit() }; RMMSG];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RMMSG];
        for (i, chunk) in buf.chunks_mut(slot).take(n).enumerate() {
            let iov = iovs[i].write(libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() });
            // SAFETY (zeroed): a plain C struct for which all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = mem::size_of::<Cmsg>() as _;
            hdrs[i].write(m);
        }
        let hdrs_ptr = hdrs.as_mut_ptr().cast::<libc::mmsghdr>();
        let count = if n == 1 {
            // SAFETY: header 0 is initialized and points at buffers that outlive the call.
            let r = unsafe { libc::recvmsg(fd, &mut (*hdrs_ptr).msg_hdr, 0) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            unsafe { (*hdrs_ptr).msg_len = r as libc::c_uint };
            1
        } else {
            // SAFETY: n initialized headers, each pointing at buffers that outlive the call; no timeout.
            let r = unsafe { libc::recvmmsg(fd, hdrs_ptr, n as libc::c_uint, 0, std::ptr::null_mut()) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            (r as usize).min(n)
        };
        for i in 0..count {
            // SAFETY: the first n headers were initialized above, and count <= n.
            let m = unsafe { hdrs[i].assume_init_ref() };
            let h = &m.msg_hdr;
            let len = (m.msg_len as usize).min(slot);
            // SAFETY: the kernel wrote msg_namelen bytes of the name (at most its size).
            let Some(from) = (unsafe { address(names[i].as_ptr(), h.msg_namelen) }) else { continue };
            let stride = gro_stride(h).filter(|&s| s > 0 && s < len).unwrap_or(len);
            got.push(RxMeta { from, start: i * slot, len, stride });
        }
        Ok(count)
    }

    /// The segment size of a GRO-coalesced run, from its control message.
    fn gro_stride(h: &libc::msghdr) -> Option<usize> {
        if h.msg_controllen == 0 || h.msg_control.is_null() {
            return None;
        }
        // SAFETY: the kernel filled msg_control up to msg_controllen (within our buffer, whose
        // length it was given); CMSG_FIRSTHDR/NXTHDR stay inside it, and the data read is checked
        // against cmsg_len first.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            // A handful of options at most fit in 32 bytes: bound the walk anyway.
            for _ in 0..4 {
                if c.is_null() {
                    return None;
                }
                let want = libc::CMSG_LEN(mem::size_of::<libc::c_int>() as u32) as usize;
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO && (*c).cmsg_len as usize >= want
                {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// The sender's address from a name the kernel wrote `len` bytes of.
    ///
    /// # Safety
    /// `storage` points at a `sockaddr_storage` whose first `len` bytes are initialized.
    unsafe fn address(storage: *const libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        if len < mem::size_of::<libc::sa_family_t>() {
            return None;
        }
        // SAFETY: the family field is within the initialized bytes.
        let family = unsafe { std::ptr::addr_of!((*storage).ss_family).read() };
        match family as libc::c_int {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family and length say an initialized sockaddr_in is there; storage
                // is aligned for it.
                let a = unsafe { storage.cast::<libc::sockaddr_in>().read() };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe { storage.cast::<libc::sockaddr_in6>().read() };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
            }
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! Elsewhere: one datagram per call, through tokio.

    use std::io;
    use std::vec::Vec;

    use tokio::net::UdpSocket;

    use super::{Offload, RxMeta, TxSend};

    pub(super) fn probe(_: &UdpSocket) -> Offload {
        Offload::PLAIN
    }

    pub(super) fn is_unsupported(_: &io::Error) -> bool {
        false
    }

    pub(super) fn is_gso_refusal(_: &io::Error) -> bool {
        false
    }

    pub(super) fn send(socket: &UdpSocket, buf: &[u8], sends: &[TxSend], _: bool) -> io::Result<usize> {
        let s = sends[0];
        socket.try_send_to(&buf[s.start..s.end], s.dest).map(|_| 1)
    }

    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
        slot: usize,
        _: usize,
        _: bool,
        got: &mut Vec<RxMeta>,
    ) -> io::Result<usize> {
        let (len, from) = socket.try_recv_from(&mut buf[..slot])?;
        got.push(RxMeta { from, start: 0, len, stride: len });
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    //! Over real loopback sockets: every path delivers every datagram, whole, in order, from the
    //! right address; the batched paths do it in fewer calls.

    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;
    use std::vec::Vec;

    use tokio::net::UdpSocket;

    use super::*;

    /// A 64 KiB message's worth of datagrams (54 full, one short), then small ones of varied sizes.
    fn datagrams() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (0..54u32).map(|i| vec![i as u8; MAX_DATAGRAM]).collect();
        v.push(vec![0xee; 65_536 - 54 * MAX_DATAGRAM + 100]);
        for i in 0..200usize {
            v.push(vec![(i % 251) as u8; 1 + (i * 37) % 300]);
        }
        v
    }

    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Room for a whole batch even on a loaded machine (the kernel may cap it; best effort).
        let _ = socket2::SockRef::from(&b).set_recv_buffer_size(1 << 20);
        (a, b)
    }

    /// Sends `all` to `to` in batches as the driver does; returns the calls made.
    async fn send_all(socket: &UdpSocket, offload: &mut Offload, to: SocketAddr, all: &[Vec<u8>]) -> SendReport {
        let mut batch = TxBatch::new();
        let mut total = SendReport::default();
        for d in all {
            if batch.room().is_none() {
                let r = send(socket, offload, &mut batch).await;
                total.calls += r.calls;
                total.failed += r.failed;
                // Let the receiver drain, or the default receive buffer overflows.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            batch.room().expect("room after sending")[..d.len()].copy_from_slice(d);
            batch.push(to, d.len());
        }
        let r = send(socket, offload, &mut batch).await;
        total.calls += r.calls;
        total.failed += r.failed;
        total
    }

    /// Receives `count` datagrams on `socket`; returns them with their senders and the calls made.
    async fn recv_n(socket: &UdpSocket, mut offload: Offload, count: usize) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
        let mut rx = RxBatch::new(offload);
        let mut got = Vec::new();
        let mut calls = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < count {
            let wait = tokio::time::timeout_at(deadline, socket.readable()).await;
            assert!(wait.is_ok(), "only {} of {count} datagrams arrived", got.len());
            for _ in 0..count {
                match rx.recv(socket, &mut offload) {
                    Ok(_) => {
                        calls += 1;
                        // In small steps, as the driver does.
                        while rx.drain(7, |from, d| got.push((from, d.to_vec()))) > 0 {}
                        assert!(rx.is_drained());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("receive failed: {e}"),
                }
            }
        }
        (got, calls)
    }

    async fn delivers(send_offload: Offload, recv_offload: Offload) -> (SendReport, usize) {
        let (a, b) = pair().await;
        let all = datagrams();
        let mut offload = send_offload;
        let (report, (got, calls)) = tokio::join!(
            send_all(&a, &mut offload, b.local_addr().unwrap(), &all),
            recv_n(&b, recv_offload, all.len())
        );
        assert_eq!(report.failed, 0);
        assert_eq!(got.len(), all.len());
        for (i, ((from, d), want)) in got.iter().zip(&all).enumerate() {
            assert_eq!(*from, a.local_addr().unwrap());
            assert_eq!(d, want, "datagram {i}");
        }
        (report, calls)
    }

    #[tokio::test]
    async fn plain_path_delivers_a_64k_message_and_small_datagrams_one_call_each() {
        let (report, calls) = delivers(Offload::PLAIN, Offload::PLAIN).await;
        assert_eq!(report.calls, datagrams().len() as u64, "one send call per datagram");
        assert_eq!(calls, datagrams().len(), "one receive call per datagram");
    }

    #[tokio::test]
    async fn batched_path_delivers_the_same_in_fewer_calls() {
        let probe = Offload::probe(&UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (socket, receiver) = pair().await;
        let (send_offload, recv_offload) = (Offload::probe(&socket), Offload::probe(&receiver));
        drop((socket, receiver));
        let (report, calls) = delivers(send_offload, recv_offload).await;
        if cfg!(target_os = "linux") {
            assert!(probe.mmsg);
            assert!(report.calls <= 8, "{} send calls for {} datagrams", report.calls, datagrams().len());
            assert!(calls < datagrams().len() / 2, "{calls} receive calls");
        }
    }

    #[tokio::test]
    async fn batched_sender_to_plain_receiver_and_back() {
        let probe = Offload::probe(&UdpSocket::bind("127.0.0.1:0").await.unwrap());
        delivers(probe, Offload::PLAIN).await;
        delivers(Offload::PLAIN, probe).await;
        delivers(Offload { mmsg: false, ..probe }, Offload { mmsg: false, ..probe }).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn refused_segmentation_falls_back_once_and_still_delivers() {
        use std::os::fd::AsRawFd;
        let (a, b) = pair().await;
        let mut offload = Offload::probe(&a);
        if !offload.gso {
            return; // nothing to refuse on this kernel
        }
        // Without UDP checksums the kernel refuses GSO (EINVAL), as a device without offload does.
        let on: libc::c_int = 1;
        // SAFETY: a valid int option on an open socket.
        let r = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                core::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let all = datagrams();
        let recv_offload = Offload::probe(&b);
        let (report, (got, _)) = tokio::join!(
            send_all(&a, &mut offload, b.local_addr().unwrap(), &all),
            recv_n(&b, recv_offload, all.len())
        );
        assert!(!offload.gso, "GSO is off after the refusal");
        assert!(offload.mmsg, "sendmmsg stays on");
        assert_eq!(report.failed, 0);
        assert_eq!(got.into_iter().map(|(_, d)| d).collect::<Vec<_>>(), all);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn segmented_multicast_reaches_coalescing_and_plain_receivers() {
        let group = Ipv4Addr::new(239, 255, 201, (std::process::id() % 250) as u8 + 1);
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let join = || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddrV4::new(group, port).into()).unwrap();
            s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
            s.set_nonblocking(true).unwrap();
            UdpSocket::from_std(s.into()).unwrap()
        };
        let (coalescing, plain) = (join(), join());
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&sender).set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        let mut offload = Offload::probe(&sender);
        let gro = Offload::probe(&coalescing);
        let all = datagrams();
        let to = SocketAddr::V4(SocketAddrV4::new(group, port));
        let (report, (got_c, calls_c), (got_p, _)) = tokio::join!(
            send_all(&sender, &mut offload, to, &all),
            recv_n(&coalescing, gro, all.len()),
            recv_n(&plain, Offload::PLAIN, all.len())
        );
        assert_eq!(report.failed, 0);
        assert!(offload.gso == gro.gso, "multicast does not refuse GSO on loopback");
        for got in [got_c, got_p] {
            assert_eq!(got.into_iter().map(|(_, d)| d).collect::<Vec<_>>(), all);
        }
        if gro.gro {
            assert!(calls_c < all.len() / 2, "{calls_c} receive calls with GRO");
        }
    }

    #[tokio::test]
    async fn oversized_datagrams_arrive_oversized_never_cut_to_a_valid_length() {
        for offload in [Offload::PLAIN, Offload::probe(&UdpSocket::bind("127.0.0.1:0").await.unwrap())] {
            let (a, b) = pair().await;
            a.send_to(&[7u8; 5000], b.local_addr().unwrap()).await.unwrap();
            a.send_to(&[], b.local_addr().unwrap()).await.unwrap();
            let (got, _) = recv_n(&b, offload, 2).await;
            assert!(got[0].1.len() > MAX_DATAGRAM, "{offload:?}");
            assert!(got[1].1.is_empty(), "an empty datagram still reaches the core");
        }
    }

    #[test]
    fn plan_groups_same_size_runs_per_destination() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = TxBatch::new();
        for (dest, len) in [(a, 1200), (a, 1200), (a, 700), (a, 1200), (b, 64), (b, 64), (a, 100), (b, 80), (b, 90)] {
            batch.room().unwrap();
            batch.push(dest, len);
        }
        let mut sends = Vec::new();
        batch.plan(0, true, &mut sends);
        let shape: Vec<(SocketAddr, usize, usize)> = sends.iter().map(|s| (s.dest, s.items, s.segment)).collect();
        assert_eq!(shape, [(a, 3, 1200), (a, 1, 0), (b, 2, 64), (a, 1, 0), (b, 1, 0), (b, 1, 0)]);
        batch.plan(0, false, &mut sends);
        assert_eq!(sends.len(), 9);
        assert!(sends.iter().all(|s| s.segment == 0 && s.items == 1));
        // A full batch of full datagrams stays within the kernel's GSO limits.
        let mut batch = TxBatch::new();
        while batch.room().is_some() {
            batch.push(a, MAX_DATAGRAM);
        }
        batch.plan(0, true, &mut sends);
        assert!(sends.iter().all(|s| s.items <= GSO_MAX_SEGMENTS && s.end - s.start <= GSO_MAX_BYTES));
        assert_eq!(sends.iter().map(|s| s.items).sum::<usize>(), TX_DATAGRAMS);
    }
}

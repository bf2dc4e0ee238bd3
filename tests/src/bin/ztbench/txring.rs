//! The comparative benchmark's traffic generator: an `AF_PACKET` socket with a `PACKET_TX_RING`
//! (TPACKET_V2) and `PACKET_QDISC_BYPASS`, bound to the sender's veth. Frames are written into
//! the mapped ring, marked for sending, and one `send()` hands the whole ring to the driver
//! (`dev_direct_xmit`, no qdisc), in the calling thread: one system call per ring of frames.
//!
//! It needs no BPF at all, so it runs where `BPF_PROG_TEST_RUN` with live frames is refused
//! (EPERM on these kernels) and where there is no pktgen.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

/// Frames in the ring, and the size of each slot (a page holds two).
const FRAMES: u32 = 512;
const FRAME_SIZE: u32 = 2048;
/// `struct tpacket2_hdr` is 32 bytes; with PACKET_TX_HAS_OFF unset the frame's data starts at
/// TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) = 32.
const DATA_OFFSET: usize = 32;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;

/// The socket and its mapped ring.
pub struct TxRing {
    fd: OwnedFd,
    ring: *mut u8,
    len: usize,
    next: u32,
}

// SAFETY: the mapping belongs to this value only; it is used by one thread at a time (&mut).
unsafe impl Send for TxRing {}

fn os_err(what: &str) -> anyhow::Error {
    let e = io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (AF_PACKET sockets need CAP_NET_RAW: run as root)",
        Some(libc::EAFNOSUPPORT) => " (the kernel has no AF_PACKET: CONFIG_PACKET)",
        Some(libc::ENOPROTOOPT) => {
            " (the kernel's AF_PACKET has no TX ring or qdisc bypass: CONFIG_PACKET_MMAP, Linux >= 3.14)"
        }
        _ => "",
    };
    anyhow::anyhow!("{what}: {e}{hint}")
}

fn setsockopt<T>(fd: i32, opt: i32, value: &T, what: &str) -> Result<()> {
    // SAFETY: `value` points at a live T of the size given.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_PACKET, opt, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(os_err(what));
    }
    Ok(())
}

impl TxRing {
    /// Opens the ring on `ifindex` of the calling thread's network namespace (the socket stays
    /// in that namespace wherever it is used afterwards).
    pub fn open(ifindex: u32) -> Result<TxRing> {
        // Protocol 0: the socket receives nothing, it only sends.
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(os_err("AF_PACKET socket"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        setsockopt(
            s,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V2 as libc::c_int),
            "PACKET_VERSION TPACKET_V2",
        )?;
        setsockopt(s, libc::PACKET_QDISC_BYPASS, &1 as &libc::c_int, "PACKET_QDISC_BYPASS")?;
        let req = libc::tpacket_req {
            tp_block_size: 4096,
            tp_block_nr: FRAMES * FRAME_SIZE / 4096,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: FRAMES,
        };
        setsockopt(s, libc::PACKET_TX_RING, &req, "PACKET_TX_RING")?;
        let len = (FRAMES * FRAME_SIZE) as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket.
        let ring = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, s, 0)
        };
        if ring == libc::MAP_FAILED {
            return Err(os_err("mmap of the TX ring"));
        }
        let ring = TxRing { fd, ring: ring.cast(), len, next: 0 };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set are the ones bind reads.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(s, (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(os_err(&format!("binding the AF_PACKET socket to ifindex {ifindex}")));
        }
        Ok(ring)
    }

    fn status(&self, slot: u32) -> *mut u32 {
        // SAFETY: slot < FRAMES, so the header lies inside the mapping; tp_status is its first field.
        unsafe { self.ring.add((slot * FRAME_SIZE) as usize).cast::<u32>() }
    }

    /// Sends `count` frames: frame `i` is written by `fill(i, buf)` into the slot's data area
    /// and is `buf`'s first `len` bytes. The ring is kicked every `BATCH` frames without
    /// waiting (MSG_DONTWAIT): the kernel hands the marked frames to the driver and frees each
    /// slot when its frame has left; a slot still in use is waited for. A frame the device
    /// refuses (its queue stopped) is dropped by the kernel, not retried: the receiver's
    /// counters say what arrived.
    pub fn send(&mut self, count: u64, len: usize, mut fill: impl FnMut(u64, &mut [u8])) -> Result<()> {
        const BATCH: u32 = 64;
        let mut queued: u32 = 0;
        for i in 0..count {
            let slot = self.next;
            self.wait_free(slot)?;
            // SAFETY: the slot's data area (FRAME_SIZE - DATA_OFFSET bytes) lies inside the mapping.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ring.add((slot * FRAME_SIZE) as usize + DATA_OFFSET),
                    FRAME_SIZE as usize - DATA_OFFSET,
                )
            };
            fill(i, buf);
            let status = self.status(slot);
            // SAFETY: tp_len is the header's second u32; the status is written last, as the
            // kernel reads the frame only once it says SEND_REQUEST.
            unsafe {
                status.add(1).write_volatile(len as u32);
                std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
                status.write_volatile(TP_STATUS_SEND_REQUEST);
            }
            self.next = (slot + 1) % FRAMES;
            queued += 1;
            if queued == BATCH {
                self.kick()?;
                queued = 0;
            }
        }
        self.kick()?;
        // Every frame handed over before returning, so the caller's counters see them all.
        for slot in 0..FRAMES {
            self.wait_free(slot)?;
        }
        Ok(())
    }

    /// Waits until the kernel is done with `slot`, kicking the ring meanwhile.
    fn wait_free(&mut self, slot: u32) -> Result<()> {
        let t0 = std::time::Instant::now();
        loop {
            // SAFETY: `status` points into the mapping; the kernel writes it, hence volatile.
            let st = unsafe { self.status(slot).read_volatile() };
            if st == TP_STATUS_AVAILABLE {
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                return Ok(());
            }
            if st & TP_STATUS_WRONG_FORMAT != 0 {
                bail!("the kernel refused a frame of the TX ring (TP_STATUS_WRONG_FORMAT)");
            }
            if t0.elapsed() > std::time::Duration::from_secs(30) {
                bail!("a frame of the TX ring was not sent for 30 s (the sender's veth is down or its queue is stuck)");
            }
            if st == TP_STATUS_SEND_REQUEST {
                self.kick()?;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Hands the marked frames to the driver, without waiting for them to leave.
    fn kick(&mut self) -> Result<()> {
        // SAFETY: send(2) with no buffer: the kernel takes the ring's marked frames.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // ENOBUFS: a frame was refused (and dropped); EAGAIN: the socket's send buffer is
            // full of frames the receiver has not taken yet (a veth's ring waiting for its NAPI
            // thread): the slots stay marked and `wait_free` kicks again. (Debian's trafgen
            // exits on this EAGAIN, which issue 18 took for a receive queue that stopped:
            // docs/performance.md.)
            if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOBUFS)) {
                return Err(e).context("send() on the TX ring");
            }
        }
        Ok(())
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `open`, once.
        unsafe { libc::munmap(self.ring.cast(), self.len) };
    }
}

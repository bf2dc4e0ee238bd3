//! The generator's side: the frames it sends (one source, or a scan of 65,536) and the sender
//! thread pinned to CPU 0.
use super::*;

/// Ethernet + IPv4 + UDP (8 bytes of payload), UDP checksum zero (none, valid for IPv4); the
/// stack answers the allowed datagrams with (rate-limited) port unreachables.
pub(super) fn udp_frame(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&16u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0; 8]);
    f.resize(60, 0);
    // The IPv4 header checksum: the stack drops a frame without a valid one before nft's inet
    // hooks (`scan_source` recomputes it for every scan frame).
    let sum = frame::checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f
}

pub(super) fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity({pid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The scan's frame `i`: the base frame with the low 16 bits of the source set to a
/// permutation of `i` (every one of the 65,536 sources once in 65,536 frames) and the IPv4
/// header checksum recomputed.
pub(super) fn scan_source(frame: &mut [u8], i: u64) {
    let low = (i.wrapping_mul(40_503) & 0xffff) as u16;
    frame[28..30].copy_from_slice(&low.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = frame::checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// Sends `count` frames of `t` from a thread pinned to CPU 0; returns the seconds it took.
pub(super) fn send(ring: &mut TxRing, t: Traffic, frame: &[u8], count: u64) -> Result<f64> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<f64> {
            pin_to_cpu(0, 0)?;
            let t0 = Instant::now();
            ring.send(count, frame.len(), |i, buf| {
                buf[..frame.len()].copy_from_slice(frame);
                if t == Traffic::Scan {
                    scan_source(&mut buf[..frame.len()], i);
                }
            })?;
            Ok(t0.elapsed().as_secs_f64())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
    })
}

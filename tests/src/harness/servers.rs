//! TCP and UDP echo servers in a namespace, stopped and joined on drop.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::harness::netns::{Netns, enter};

/// Servers in a namespace: TCP (greets "hi" then echoes lines) and UDP (echoes, counts per
/// port). Stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub udp_received: Arc<Vec<(u16, AtomicU64)>>,
}

impl Servers {
    pub fn start(ns: &Netns, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<(u16, AtomicU64)>> = Arc::new(udp.iter().map(|p| (*p, AtomicU64::new(0))).collect());
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for &port in tcp {
            let (stop, path, tx) = (stop.clone(), ns.path(), tx.clone());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let l = TcpListener::bind(("::", port)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let stop = stop.clone();
                            std::thread::spawn(move || tcp_echo(s, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        for (i, &port) in udp.iter().enumerate() {
            let (stop, path, tx, counts) = (stop.clone(), ns.path(), tx.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let s = UdpSocket::bind(("::", port)).expect("bind udp");
                // A large receive buffer: when this thread waits for a CPU during a burst, the
                // datagrams the datapath admitted must not be lost by the socket instead.
                let size: libc::c_int = 16 << 20;
                // SAFETY: setsockopt on our socket with a c_int option value.
                let rc = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        counts[i].1.fetch_add(1, Ordering::Relaxed);
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        for _ in 0..tcp.len() + udp.len() {
            rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
        }
        Servers { stop, threads, udp_received: counts }
    }

    pub fn udp_count(&self, port: u16) -> u64 {
        self.udp_received.iter().find(|(p, _)| *p == port).map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }
}

fn tcp_echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    if s.write_all(b"hi\n").is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

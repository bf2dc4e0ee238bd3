//! The offered traffic: its rates, the threads that send it, and their tallies.

use std::io::{Read as _, Write as _};

use super::{
    Arc, AtomicBool, AtomicU64, Duration, Instant, IpAddr, Ipv4Addr, JoinHandle, LIMIT_BURST, LIMIT_RATE, Mutex,
    Ordering, SocketAddr, TcpStream, UdpSocket, mono_ns, paced, spawn_in,
};

// Offered traffic, per second.
pub(crate) const TCP_RATE: f64 = 40.0;
pub(crate) const UDP_FLOW_RATE: f64 = 20.0;
pub(crate) const UDP_LONG_FLOWS: usize = 4;
pub(crate) const UDP_LONG_INTERVAL: Duration = Duration::from_millis(100);
pub(crate) const TOGGLE_RATE: f64 = 50.0;
pub(crate) const TOGGLE_PORT: u16 = 9050;
pub(crate) const BATCH_RATE: f64 = 3.0 * LIMIT_RATE;
pub(crate) const BATCH_PORTS: u16 = 10;
pub(crate) const FLOOD_RATE: f64 = 300.0;
pub(crate) const FLOOD_PORT: u16 = 9999;
pub(crate) const SCAN_RATE: f64 = 300.0;
pub(crate) const SCAN_SOURCES: u8 = 8;
pub(crate) const ATTACK_SYN_RATE: f64 = 5.0;
pub(crate) const ADMIN_SYN_RATE: f64 = 2.0;

/// What one generator did. `flow_times`: CLOCK_MONOTONIC (ns) of the last packet of each flow
/// it created, for the conntrack audit.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) sent: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) flow_times: Mutex<Vec<u64>>,
}

impl Tally {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub(crate) fn flow(&self, t: u64) {
        self.flow_times.lock().unwrap().push(t);
    }
    /// Flows whose last packet was at or after `t`.
    pub(crate) fn flows_since(&self, t: u64) -> u64 {
        self.flow_times.lock().unwrap().iter().filter(|&&x| x >= t).count() as u64
    }
}

#[derive(Default)]
pub(crate) struct Tallies {
    pub(crate) tcp: Tally,
    pub(crate) udp_flows: Tally,
    pub(crate) udp_long: Tally,
    pub(crate) toggle: Tally,
    pub(crate) batch: Tally,
    pub(crate) flood: Tally,
    pub(crate) scan: Tally,
    pub(crate) attack_syn: Tally,
    pub(crate) admin_syn: Tally,
    /// Time (ns) the batch sender lost to pauses longer than its bucket takes to fill
    /// (burst / rate): the tokens of that time went unused, whatever the limit did. A busy
    /// machine makes such pauses; the rate-limit check takes them out instead of failing.
    pub(crate) batch_idle_ns: AtomicU64,
}

/// A short TCP session: greeting, one echoed line, close (both sides send a FIN).
pub(crate) fn tcp_session(dst: SocketAddr) -> bool {
    // Generous: a failure is a check failure, and a busy machine may delay the server's thread.
    let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(5)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut hi = [0u8; 3];
    if s.read_exact(&mut hi).is_err() || &hi != b"hi\n" {
        return false;
    }
    if s.write_all(b"soak\n").is_err() {
        return false;
    }
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).is_ok() && &echo == b"soak\n"
}

/// One SYN that policy denies: given up before the first retransmission (1 s).
pub(crate) fn denied_syn(dst: SocketAddr) -> bool {
    TcpStream::connect_timeout(&dst, Duration::from_millis(250)).is_ok()
}

pub(crate) fn udp_socket(bind: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind udp");
    s.set_nonblocking(true).unwrap();
    s
}

/// Reads whatever echoes are waiting; returns how many.
pub(crate) fn drain(s: &UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

pub(crate) struct Hosts {
    pub(crate) pay4: IpAddr,
    pub(crate) pay6: IpAddr,
    pub(crate) front: String,
    pub(crate) batch: String,
    pub(crate) attacker: String,
    pub(crate) batch4: IpAddr,
    pub(crate) attacker4: IpAddr,
}

pub(crate) fn attacker_sources(n: u8) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(10, 20, 9, 3 + i))).collect()
}

/// Starts every generator; they run until `stop`.
pub(crate) fn start_traffic(
    h: &Hosts,
    t: &Arc<Tallies>,
    stop: &Arc<AtomicBool>,
    scan_rate: f64,
) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    let (pay4, pay6) = (h.pay4, h.pay6);
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6: IpAddr = "::".parse().unwrap();

    // Allowed: short TCP connections, IPv4 and IPv6 in turn.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, TCP_RATE, |i| {
            let dst = SocketAddr::new(if i % 2 == 0 { pay4 } else { pay6 }, 443);
            Tally::add(&tt.tcp.sent);
            if tcp_session(dst) {
                Tally::add(&tt.tcp.ok);
            } else {
                Tally::add(&tt.tcp.failed);
            }
            tt.tcp.flow(mono_ns());
        });
    }));
    // Allowed: new UDP flows, one datagram and its echo each.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, UDP_FLOW_RATE, |i| {
            let (dst, bind) = if i % 2 == 0 { (pay4, any4) } else { (pay6, any6) };
            let s = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind udp");
            // Generous: an echo missed counts against the 99%, and the server's thread may wait.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            Tally::add(&tt.udp_flows.sent);
            let _ = s.send_to(b"flow", SocketAddr::new(dst, 53));
            let mut buf = [0u8; 16];
            if matches!(s.recv_from(&mut buf), Ok((4, _))) {
                Tally::add(&tt.udp_flows.ok);
            } else {
                Tally::add(&tt.udp_flows.failed);
            }
            tt.udp_flows.flow(mono_ns());
        });
    }));
    // Allowed: long-lived UDP flows.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        let socks: Vec<UdpSocket> = (0..UDP_LONG_FLOWS).map(|_| udp_socket(any4)).collect();
        while !st.load(Ordering::Relaxed) {
            for s in &socks {
                let _ = s.send_to(b"long", SocketAddr::new(pay4, 53));
                Tally::add(&tt.udp_long.sent);
            }
            std::thread::sleep(UDP_LONG_INTERVAL);
            for s in &socks {
                tt.udp_long.ok.fetch_add(drain(s), Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for s in &socks {
            tt.udp_long.ok.fetch_add(drain(s), Ordering::Relaxed);
            tt.udp_long.flow(mono_ns());
        }
    }));
    // Toggled: allowed under A, revoked then denied under B.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        let s = udp_socket(any4);
        paced(&st, TOGGLE_RATE, |_| {
            if s.send_to(b"toggle", SocketAddr::new(pay4, TOGGLE_PORT)).is_ok() {
                Tally::add(&tt.toggle.sent);
            }
            tt.toggle.ok.fetch_add(drain(&s), Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(200));
        tt.toggle.ok.fetch_add(drain(&s), Ordering::Relaxed);
        tt.toggle.flow(mono_ns());
    }));
    // Denied by a rule: frontend -> 8081/tcp.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, ADMIN_SYN_RATE, |_| {
            Tally::add(&tt.admin_syn.sent);
            if denied_syn(SocketAddr::new(pay4, 8081)) {
                Tally::add(&tt.admin_syn.ok);
            }
        });
    }));
    // Rate limited: batch -> 7000-7009/udp at 3x the limit, from one socket.
    let (tt, st) = (t.clone(), stop.clone());
    let batch4 = h.batch4;
    threads.push(spawn_in(h.batch.clone(), move || {
        let s = udp_socket(batch4);
        let fills = Duration::from_secs_f64(LIMIT_BURST / LIMIT_RATE);
        let mut last = Instant::now();
        paced(&st, BATCH_RATE, |i| {
            let gap = last.elapsed();
            last = Instant::now();
            if gap > fills {
                tt.batch_idle_ns.fetch_add((gap - fills).as_nanos() as u64, Ordering::Relaxed);
            }
            match s.send_to(b"batch", SocketAddr::new(pay4, 7000 + (i % BATCH_PORTS as u64) as u16)) {
                Ok(_) => Tally::add(&tt.batch.sent),
                Err(_) => Tally::add(&tt.batch.failed),
            }
            if i % 50 == 0 {
                tt.batch.ok.fetch_add(drain(&s), Ordering::Relaxed);
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        tt.batch.ok.fetch_add(drain(&s), Ordering::Relaxed);
        for _ in 0..BATCH_PORTS {
            tt.batch.flow(mono_ns());
        }
    }));
    // Denied: a flood of one flow.
    let (tt, st) = (t.clone(), stop.clone());
    let attacker4 = h.attacker4;
    threads.push(spawn_in(h.attacker.clone(), move || {
        let s = udp_socket(attacker4);
        paced(&st, FLOOD_RATE, |_| match s.send_to(b"flood", SocketAddr::new(pay4, FLOOD_PORT)) {
            Ok(_) => Tally::add(&tt.flood.sent),
            Err(_) => Tally::add(&tt.flood.failed),
        });
    }));
    // Denied: a scan, one datagram to each of ever-new ports from 8 addresses (ports 1024 and
    // up, never repeating a (source, port) within the run: each is a new denial).
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.attacker.clone(), move || {
        let socks: Vec<UdpSocket> = attacker_sources(SCAN_SOURCES).into_iter().map(udp_socket).collect();
        if scan_rate <= 0.0 {
            return;
        }
        paced(&st, scan_rate, |i| {
            let s = &socks[(i % SCAN_SOURCES as u64) as usize];
            let port = 1024 + ((i / SCAN_SOURCES as u64) % 64_000) as u16;
            match s.send_to(b"scan", SocketAddr::new(pay4, port)) {
                Ok(_) => Tally::add(&tt.scan.sent),
                Err(_) => Tally::add(&tt.scan.failed),
            }
        });
    }));
    // Denied: TCP from the world to 443.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.attacker.clone(), move || {
        paced(&st, ATTACK_SYN_RATE, |_| {
            Tally::add(&tt.attack_syn.sent);
            if denied_syn(SocketAddr::new(pay4, 443)) {
                Tally::add(&tt.attack_syn.ok);
            }
        });
    }));
    threads
}

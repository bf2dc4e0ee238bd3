//! What the tests send: denied SYNs, UDP datagrams, pings.
use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use integration_tests::Netns;

/// `n` denied TCP connection attempts from `ns` to `dst:port` at once, each a single SYN: every
/// socket is given up after 250 ms, before the first retransmission (1 s).
pub(super) fn denied_syns(ns: &Netns, dst: IpAddr, port: u16, n: usize) {
    let connected = ns.run(move || {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                // Threads started here are in the namespace too.
                std::thread::spawn(move || {
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_millis(250)).is_ok()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count()
    });
    assert_eq!(connected, 0, "a connection to a denied port was established");
}

/// `n` one-byte UDP datagrams from `ns` to `dst`, to `port` (or `port + i` when `distinct`),
/// from one socket. `paced`: a pause every 50 datagrams, so that no queue between the
/// namespaces overflows and every datagram reaches the enforced interface.
pub(super) fn udp_send(ns: &Netns, dst: IpAddr, port: u16, n: usize, distinct: bool, paced: bool) {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            let p = if distinct { port + i as u16 } else { port };
            s.send_to(b"x", SocketAddr::new(dst, p)).expect("send");
            if paced && i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

/// `ping -c count -i 0.01` from `ns`: (transmitted, received).
pub(super) fn pings(ns: &Netns, dst: IpAddr, count: u32) -> (u64, u64) {
    let out = ns.exec(&["ping", "-q", "-n", "-c", &count.to_string(), "-i", "0.01", "-W", "1", &dst.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping said:\n{text}"));
    let num = |word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("no {word} in {line:?}"));
        words[i - 1].parse().unwrap()
    };
    (num("packets"), num("received"))
}

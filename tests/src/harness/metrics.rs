//! The agent's metrics endpoint, read as a scraper reads it.

use std::time::Duration;

use crate::harness::netns::Netns;

/// `GET /metrics` on 127.0.0.1:`port` from inside `ns` (where an agent serves its metrics):
/// the raw HTTP response, head and body.
pub fn get_metrics(ns: &Netns, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    ns.run(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    })
}

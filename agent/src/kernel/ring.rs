//! The kernel's event sources: the `EVENTS` ring buffer (read as the kernel fills it) and the
//! aggregation maps (`DENIED`, `AGG`, `FLOOD`) a sweep reads once an interval for what no event
//! carried.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use agent_common::{AggKey, AggValue, DenyKey, DenyValue, Event, FloodValue, http::HttpEvent, maps};
use aya::maps::{MapData, PerCpuArray, RingBuf};

use super::datapath::DatapathError;

/// The kernel maps events come from: the ring buffer, and the aggregation maps the sweep reads.
pub struct EventSources {
    ring: RingBuf<MapData>,
    denied: aya::maps::HashMap<MapData, DenyKey, DenyValue>,
    dropped: aya::maps::HashMap<MapData, AggKey, AggValue>,
    flood: PerCpuArray<MapData, FloodValue>,
}

impl EventSources {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| DatapathError::Map { name, message: "missing".into() })
        };
        let err =
            |name: &'static str| move |e: aya::maps::MapError| DatapathError::Map { name, message: e.to_string() };
        Ok(EventSources {
            ring: RingBuf::try_from(take(ebpf, maps::EVENTS)?).map_err(err(maps::EVENTS))?,
            denied: aya::maps::HashMap::try_from(take(ebpf, maps::DENIED)?).map_err(err(maps::DENIED))?,
            dropped: aya::maps::HashMap::try_from(take(ebpf, maps::AGG)?).map_err(err(maps::AGG))?,
            flood: PerCpuArray::try_from(take(ebpf, maps::FLOOD)?).map_err(err(maps::FLOOD))?,
        })
    }

    /// The reader (woken by the ring buffer: each batch of events to `publish`) and the sweep
    /// (once an interval: the aggregation maps' entries to `sweep`). `delivered` counts the
    /// events read.
    pub fn spawn<P, S>(self, publish: P, sweep: S, delivered: Arc<AtomicU64>)
    where
        P: Fn(&[Event], &[HttpEvent]) + Send + 'static,
        S: Fn(
                &mut dyn Iterator<Item = (DenyKey, DenyValue)>,
                &mut dyn Iterator<Item = (AggKey, AggValue)>,
                &dyn Fn(u32) -> Vec<FloodValue>,
            ) + Send
            + 'static,
    {
        let EventSources { ring, denied, dropped, flood } = self;
        tokio::spawn(async move {
            // SAFETY: the RingBuf owns its map fd, which stays open and the same while the
            // AsyncFd owns the RingBuf.
            let registered =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
            let mut fd = match registered {
                Ok(fd) => fd,
                Err(e) => return tracing::error!("cannot watch the event ring buffer: {e}"),
            };
            let mut batch: Vec<Event> = Vec::with_capacity(4096);
            let mut http: Vec<HttpEvent> = Vec::new();
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => return tracing::error!("event ring buffer: {e}"),
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    // Two kinds of records, told apart by their sizes.
                    if item.len() == std::mem::size_of::<HttpEvent>() {
                        // SAFETY: the kernel wrote an HttpEvent (plain data): the item is its size.
                        http.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HttpEvent>()) });
                    } else if item.len() >= std::mem::size_of::<Event>() {
                        // SAFETY: the kernel wrote an Event (plain data) at the start of the item.
                        batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
                    }
                }
                guard.clear_ready();
                delivered.fetch_add((batch.len() + http.len()) as u64, Ordering::Relaxed);
                publish(&batch, &http);
                batch.clear();
                http.clear();
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_nanos(agent_common::EVENT_INTERVAL_NS));
            loop {
                tick.tick().await;
                let mut d = denied.iter().filter_map(Result::ok);
                let mut a = dropped.iter().filter_map(Result::ok);
                let f = |index: u32| flood.get(&index, 0).map(|v| v.iter().copied().collect()).unwrap_or_default();
                sweep(&mut d, &mut a, &f);
            }
        });
    }
}

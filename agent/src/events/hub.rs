//! The hub: recent events and the live stream, fanned out to every client and observer.
use std::{collections::VecDeque, sync::Arc};

use agent_common::{AggKey, AggValue, DenyKey, DenyValue, Event, FloodValue, http::HttpEvent};

use super::decode::Decoder;
use crate::api::{EventFilter, EventRecord};
use crate::clock::monotonic_ns;
use crate::policy::CompiledPolicy;

/// A function called with every record as it is published.
type Observer = Box<dyn Fn(&EventRecord) + Send>;

/// Recent events and the live stream, shared by the reader, the sweep and every client.
pub struct EventHub {
    inner: std::sync::Mutex<HubState>,
    tx: tokio::sync::broadcast::Sender<Arc<EventRecord>>,
    capacity: usize,
}

struct HubState {
    decoder: Decoder,
    history: VecDeque<Arc<EventRecord>>,
    /// Called with every record as it is published (under the hub's lock: must be quick).
    observers: Vec<Observer>,
}

/// What a client gets: the recent events it asked for, then (following) the live ones.
pub struct Subscription {
    pub history: Vec<Arc<EventRecord>>,
    pub live: tokio::sync::broadcast::Receiver<Arc<EventRecord>>,
}

impl EventHub {
    /// Keeps the last `capacity` events; a client more than `lag` events behind the stream is
    /// told how many it missed instead of holding the others up or growing memory.
    pub fn new(capacity: usize, lag: usize) -> EventHub {
        let (tx, _) = tokio::sync::broadcast::channel(lag.max(16));
        EventHub {
            inner: std::sync::Mutex::new(HubState {
                decoder: Decoder::new(),
                history: VecDeque::new(),
                observers: Vec::new(),
            }),
            tx,
            capacity,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy(&self, revision: u32, compiled: Arc<CompiledPolicy>) {
        self.state().decoder.policy(revision, compiled);
    }

    /// The pods that name addresses in records from now on (`--k8s-objects`).
    pub fn pods(&self, pods: Arc<crate::k8s::Inventory>) {
        self.state().decoder.pods(pods);
    }

    /// Decodes kernel events and publishes their records.
    pub fn publish(&self, events: &[Event], http: &[HttpEvent]) {
        let mut st = self.state();
        let mut records: Vec<_> = events.iter().filter_map(|e| st.decoder.decode(e)).collect();
        records.extend(http.iter().map(|e| st.decoder.decode_http(e)));
        self.push(&mut st, records);
    }

    /// Publishes what the kernel aggregated without an event (see [`Decoder::sweep`]).
    pub fn sweep(
        &self,
        denied: impl Iterator<Item = (DenyKey, DenyValue)>,
        dropped: impl Iterator<Item = (AggKey, AggValue)>,
        flood: &dyn Fn(u32) -> Vec<FloodValue>,
    ) {
        let mut st = self.state();
        let records = st.decoder.sweep(denied, dropped, flood, monotonic_ns());
        self.push(&mut st, records);
    }

    /// Publishes a record the agent makes itself (a grant given or ended), in the same stream
    /// as the kernel's.
    pub fn note(&self, record: EventRecord) {
        let mut st = self.state();
        self.push(&mut st, vec![Arc::new(record)]);
    }

    /// Calls `f` with every record published from now on, synchronously: unlike a
    /// subscriber it cannot fall behind (for counters).
    pub fn observe(&self, f: impl Fn(&EventRecord) + Send + 'static) {
        self.state().observers.push(Box::new(f));
    }

    fn push(&self, st: &mut HubState, records: Vec<Arc<EventRecord>>) {
        for r in records {
            for f in &st.observers {
                f(&r);
            }
            if st.history.len() == self.capacity {
                st.history.pop_front();
            }
            st.history.push_back(r.clone());
            // No subscriber is not an error.
            let _ = self.tx.send(r);
        }
    }

    /// The recent events matching `filter` (its `last` only, if given), and a receiver for the ones after them (no gap,
    /// no duplicate: both are taken under the lock `push` holds).
    pub fn subscribe(&self, filter: &EventFilter) -> Subscription {
        let st = self.state();
        let mut history: Vec<_> = st.history.iter().filter(|r| filter.matches(r)).cloned().collect();
        if let Some(last) = filter.last {
            history.drain(..history.len().saturating_sub(last));
        }
        Subscription { history, live: self.tx.subscribe() }
    }
}

//! ztagent: the userspace agent. The binary (`src/main.rs`) is the daemon and the CLI; this
//! library holds what it is made of, in the order data flows:
//!
//! policy file -> [`policy`] (validated model, compiled map image) -> [`mapwriter`] (the one
//! writer of the kernel maps, atomic per push) -> kernel ([`datapath`] loads and attaches the
//! programs). [`daemon`] ties them together behind the [`control`] socket the CLI talks to.
//! Back from the kernel: ring buffer -> [`events`] (names, exact counts) -> clients, the
//! [`metrics`] endpoint and the events file ([`sink`]). Node mode ([`node`]) attaches and
//! guards interfaces as rtnetlink reports them.

pub mod alerts;
pub mod auth;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod grants;
pub mod inventory;
pub mod k8s;
pub mod fleet;
pub mod flowcount;
pub mod mapwriter;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod state;
pub mod suggest;
pub mod sink;
pub mod watch;

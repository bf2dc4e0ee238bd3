//! `ztagent run`: the enforcement daemon.
use std::{path::PathBuf, process::ExitCode};

use aya::programs::xdp::XdpMode;
use ztagent::{daemon, kernel::datapath::PinLayout};

use crate::args::{Mode, RunArgs};

/// The daemon's configuration from the command line, then the daemon until it stops.
pub async fn run(args: RunArgs, socket: PathBuf) -> anyhow::Result<ExitCode> {
    let RunArgs {
        interfaces,
        inputs,
        pin_path,
        xdp_mode,
        log: _,
        limits,
        events_history,
        socket_group,
        state_dir,
        exports,
        socket: _,
    } = args;
    let fleet = match inputs.policy_source {
        Some(url) => {
            Some((inputs.etcd_auth.target(&url)?, inputs.fleet_host.unwrap_or_else(ztagent::sources::etcd::hostname)))
        }
        None => None,
    };
    let access = ztagent::api::auth::Access::new(socket_group.as_deref())?;
    let iface_patterns = interfaces
        .iface_patterns
        .iter()
        .map(|p| ztagent::kernel::node::Pattern::new(p))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = daemon::Config {
        ifaces: interfaces.ifaces,
        iface_patterns,
        policy: inputs.policy,
        policy_overrides_pushed: inputs.policy_overrides_pushed,
        socket,
        pins: PinLayout::new(pin_path),
        xdp_mode: match xdp_mode {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        },
        limits: limits.to_limits(),
        events_history,
        access,
        state_dir,
        metrics_addr: exports.metrics_addr,
        events_file: exports.events_file,
        events_file_max_bytes: exports.events_file_max_bytes,
        policy_dir: inputs.policy_dir,
        fleet,
        k8s_objects: inputs.k8s_objects,
        k8s_api: inputs.k8s_api.then_some(ztagent::sources::k8s_api::ApiConfig { kubeconfig: inputs.kubeconfig }),
    };
    daemon::run(cfg).await?;
    Ok(ExitCode::SUCCESS)
}

//! Harness for the kernel tests, the benchmark and the demo: network namespaces, veth links and
//! bridges, agents, servers and probes ([`harness`], one module per concern). The names tests
//! use are re-exported here, so that a test reads `integration_tests::{Agent, Lan, tcp_ok}`.

pub mod harness;

pub use harness::nginx;

pub use harness::{
    agent::{Agent, uninstall},
    bpf::{Loaded, link_pins, source_ifindexes},
    etcd::{Etcd, EtcdCerts},
    frames::{frame, send_frame, send_frames, send_frames_counted},
    k8s::{
        self,
        configmap::ConfigMap,
        fake_api,
        shop::{SHOP_POLICIES, assert_only_frontend_reaches_payments, shop_pods, shop_queries},
    },
    metrics::{
        PROMETHEUS_ACCEPT, get_metrics, get_metrics_accepting, header, http_request, promtool_check_metrics,
        split_response,
    },
    netns::{Netns, veth},
    policies::{WEB_POLICY, broken_ports_policy, ports_policy},
    probes::{
        ECHO, NO_ECHO, Probe, Why, check_args, check_file, echoes, hold_tcp, parse_check, ping_ok, tcp_ok, udp_ok,
        udp_ok_from,
    },
    prometheus::Prometheus,
    servers::Servers,
    topology::{ETCD_ADDR, Host, Lan, Mgmt, Pod, PodNode, fleet_lan},
    util::{Rng, TempDir, bin, build_bin, check_json_of, json_of, require_root, sh, unique, wait_for},
};

//! The config as the proxy runs it, compiled once by [`Config::check`]: the policies, each
//! listener with what it needs (an outbound's destinations with the IDs they must prove), and
//! the settings a reload swaps. `ward run`, a reload, `ward policy explain` and the listeners
//! all take this model; nothing compiles the config again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ward_filters::{Pattern, Policy};

use super::schema::{Config, InboundConfig, OutboundConfig, RouteConfig, Tunnel};

/// A checked config, compiled.
#[derive(Debug)]
pub struct Model {
    /// The config it came from: identity, admin and log are set up from it once.
    pub config: Config,
    /// The effective config as JSON, as `/config` shows it (paths only: ward's config holds
    /// no secrets).
    pub json: serde_json::Value,
    pub settings: Settings,
    pub inbound: Vec<InboundModel>,
    pub outbound: Vec<OutboundModel>,
}

/// One inbound listener as it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundModel {
    pub name: Arc<str>,
    pub spec: InboundConfig,
    /// Its own `handshake_timeout`, or the config's.
    pub handshake_timeout: Duration,
}

/// One outbound listener as it runs: where its connections go and what they must prove.
#[derive(Debug, Clone)]
pub struct OutboundModel {
    pub name: Arc<str>,
    pub spec: OutboundConfig,
    /// Its own `handshake_timeout`, or the config's.
    pub handshake_timeout: Duration,
    /// An explicit listener's one destination.
    pub explicit: Option<(SocketAddr, Arc<Expect>)>,
    /// A transparent listener's routes, in order.
    pub routes: Vec<(Route, Arc<Expect>)>,
}

impl PartialEq for OutboundModel {
    /// The same listener: what it was compiled from is the same.
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.spec, self.handshake_timeout)
            == (&other.name, &other.spec, other.handshake_timeout)
    }
}

/// The identity a destination must prove, and how records name the check.
#[derive(Debug)]
pub struct Expect {
    pub server_id: Pattern,
    pub rule: Arc<str>,
    /// How the destination is reached, `direct`, `hbone` or `auto` (never unset here).
    pub tunnel: super::schema::Tunnel,
    /// The port of the destination's HBONE listener.
    pub hbone_port: u16,
}

/// What checking compiled: handed to [`Model::new`].
#[derive(Debug, Default)]
pub(super) struct Compiled {
    pub policies: HashMap<String, Arc<Policy>>,
    /// Each explicit outbound listener's `server_id`, by listener name.
    pub server_ids: HashMap<String, Pattern>,
    /// Each transparent outbound listener's routes, by listener name.
    pub routes: HashMap<String, Vec<Route>>,
}

impl Model {
    pub(super) fn new(config: Config, compiled: Compiled) -> Model {
        let Compiled {
            policies,
            mut server_ids,
            mut routes,
        } = compiled;
        let inbound = config
            .inbound
            .iter()
            .map(|l| InboundModel {
                name: Arc::from(l.value.name.as_str()),
                spec: l.value.clone(),
                handshake_timeout: l.value.handshake_timeout.unwrap_or(config.handshake_timeout),
            })
            .collect();
        let outbound = config
            .outbound
            .iter()
            .map(|l| {
                let v = &l.value;
                let explicit = match (v.transparent, v.forward, server_ids.remove(&v.name)) {
                    (false, Some(addr), Some(server_id)) => {
                        let rule = Arc::from(format!("server_id {}", server_id.as_str()));
                        let tunnel = v.tunnel.unwrap_or(Tunnel::Direct);
                        let hbone_port = v.hbone_port;
                        let expect = Expect {
                            server_id,
                            rule,
                            tunnel,
                            hbone_port,
                        };
                        Some((addr, Arc::new(expect)))
                    }
                    _ => None,
                };
                let routes = routes
                    .remove(&v.name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|route| {
                        let expect = Expect {
                            rule: Arc::from(format!("route {} -> {}", route.net, route.server_id.as_str())),
                            server_id: route.server_id.clone(),
                            tunnel: route.tunnel.or(v.tunnel).unwrap_or(Tunnel::Auto),
                            hbone_port: v.hbone_port,
                        };
                        (route, Arc::new(expect))
                    })
                    .collect();
                OutboundModel {
                    name: Arc::from(v.name.as_str()),
                    spec: v.clone(),
                    handshake_timeout: v.handshake_timeout.unwrap_or(config.handshake_timeout),
                    explicit,
                    routes,
                }
            })
            .collect();
        let settings = Settings::new(&config, policies);
        Model {
            json: serde_json::to_value(&config).unwrap_or_default(),
            config,
            settings,
            inbound,
            outbound,
        }
    }
}

/// What a config reload may change without restarting listeners.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub policies: HashMap<String, Arc<Policy>>,
    pub connect_timeout: Duration,
    pub detect_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub request_header_timeout: Duration,
    pub max_connection_lifetime: Option<Duration>,
    /// Ports ward itself listens on: traffic aimed at them is a loop and refused.
    pub own_ports: Vec<u16>,
    /// Each inbound listener's policy name, and its per-port overrides: looked up at use, so
    /// a reload that points a listener at another policy reaches its live connections too.
    pub listener_policies: HashMap<String, (String, HashMap<u16, String>)>,
}

impl Settings {
    /// The policy of an inbound listener (for an app port, when transparent), by name.
    pub fn policy_for(&self, listener: &str, port: Option<u16>) -> Option<(&str, &Arc<Policy>)> {
        let (default, ports) = self.listener_policies.get(listener)?;
        let name = port.and_then(|p| ports.get(&p)).unwrap_or(default);
        Some((name.as_str(), self.policies.get(name)?))
    }
}

impl Settings {
    fn new(config: &Config, policies: HashMap<String, Arc<Policy>>) -> Settings {
        let own_ports = config
            .inbound
            .iter()
            .map(|l| l.value.listen.port())
            .chain(config.outbound.iter().map(|l| l.value.listen.port()))
            .chain(config.admin.iter().map(|a| a.value.listen.port()))
            .chain(
                config
                    .admin
                    .iter()
                    .filter_map(|a| a.value.probes)
                    .map(|p| p.port()),
            )
            .filter(|p| *p != 0)
            .collect();
        let listener_policies = config
            .inbound
            .iter()
            .map(|l| {
                let ports = l
                    .value
                    .ports
                    .iter()
                    .filter_map(|(port, o)| Some((*port, o.policy.clone()?)))
                    .collect();
                (l.value.name.clone(), (l.value.policy.clone(), ports))
            })
            .collect();
        Settings {
            policies,
            listener_policies,
            connect_timeout: config.connect_timeout,
            detect_timeout: config.detect_timeout,
            idle_timeout: config.idle_timeout,
            pool_idle_timeout: config.pool_idle_timeout,
            request_header_timeout: config.request_header_timeout,
            max_connection_lifetime: config.max_connection_lifetime,
            own_ports,
        }
    }
}

/// A compiled route of a transparent outbound.
#[derive(Debug, Clone)]
pub struct Route {
    pub net: ipnet::IpNet,
    pub port: Option<u16>,
    pub server_id: ward_filters::Pattern,
    /// How its destinations are reached; the listener's `tunnel` when `None`.
    pub tunnel: Option<super::schema::Tunnel>,
}

impl Route {
    /// Parses `to` (`CIDR` or `CIDR:port`; an IPv6 CIDR with a port is written `[::/0]:443`).
    pub fn parse(r: &RouteConfig) -> Result<Route, String> {
        let (net, port) = match r.to.strip_prefix('[') {
            Some(rest) => {
                let (net, port) = rest
                    .split_once("]:")
                    .ok_or("write an IPv6 CIDR with a port as [2001:db8::/32]:443")?;
                (net, Some(port))
            }
            None => match r.to.rsplit_once(':') {
                Some((net, port)) if !net.contains(':') => (net, Some(port)),
                _ => (r.to.as_str(), None),
            },
        };
        let net: ipnet::IpNet = net
            .parse()
            .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{net:?} is not a CIDR like 10.0.0.0/8"))?;
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"))?),
            None => None,
        };
        let server_id = ward_filters::Pattern::parse_spiffe(&r.server_id).map_err(|e| e.to_string())?;
        Ok(Route {
            net,
            port,
            server_id,
            tunnel: r.tunnel,
        })
    }

    pub fn covers(&self, dst: SocketAddr) -> bool {
        self.net.contains(&dst.ip()) && self.port.is_none_or(|p| p == dst.port())
    }
}

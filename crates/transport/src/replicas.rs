//! Every replica behind one service name: the addresses a name resolves to (a Kubernetes
//! headless Service lists each pod), looked up with the system's resolver or configured name
//! servers, and endpoints that dial one address while TLS still checks the name.
//!
//! The agent keeps a stream to each dispatcher replica so every replica can reach it; the
//! gateway spreads its calls over them. Both look the name up again periodically to follow
//! replicas that come and go.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use tonic::transport::Endpoint;

use crate::TransportError;

/// A DNS resolver: the system's (`/etc/resolv.conf`, and `/etc/hosts`), or the name servers
/// given (`192.0.2.53` or `192.0.2.53:5353`, UDP and TCP). `what` names the setting in errors.
pub fn resolver(name_servers: &[String], what: &str) -> Result<TokioResolver, TransportError> {
    let servers = name_servers
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    TransportError::Config(format!(
                        "{what}: {text:?} is not an IP address or IP:port"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let built = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|err| {
                TransportError::Config(format!("{what}: the system's DNS configuration: {err}"))
            })?
            .build()
    } else {
        let servers = servers
            .iter()
            .map(|addr| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut connection| {
                        connection.port = addr.port();
                        connection
                    })
                    .collect();
                NameServerConfig::new(addr.ip(), true, connections)
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .build()
    };
    built.map_err(|err| TransportError::Config(format!("{what}: resolver: {err}")))
}

/// The host of `url` (`https://host:port/...`), without brackets around an IPv6 address.
pub fn host_of(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The addresses `host` stands for, sorted, of one family: IPv4 when there is any, else IPv6
/// (a dual-stack replica has one of each, and two streams of one agent to one replica would
/// replace each other). An IP address stands for itself; an error when the name does not
/// resolve. The name is looked up as written: a short one (`dispatcher-headless.passage.svc`)
/// goes through the resolver's search domains, as Kubernetes' names need.
pub async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<Vec<IpAddr>, TransportError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found = resolver
        .lookup_ip(host)
        .await
        .map_err(|err| TransportError::Config(format!("resolving {host}: {err}")))?;
    let mut addresses: Vec<IpAddr> = found.iter().collect();
    if addresses.iter().any(IpAddr::is_ipv4) {
        addresses.retain(IpAddr::is_ipv4);
    }
    addresses.sort();
    addresses.dedup();
    match addresses.is_empty() {
        true => Err(TransportError::Config(format!("{host}: no address"))),
        false => Ok(addresses),
    }
}

/// The host to resolve into replicas, when `url` is to be dialled replica by replica: not
/// through a proxy (the proxy resolves), not when the host is an IP address.
pub fn replicated_host(url: &str, proxy: Option<&str>) -> Option<String> {
    if crate::proxy::proxy_for(url, proxy).is_some() {
        return None;
    }
    host_of(url).filter(|host| host.parse::<IpAddr>().is_err())
}

/// `url` with its host replaced by `addr` (the scheme, port and path kept).
pub fn url_at(url: &str, addr: IpAddr) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let port = match hostport.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").map(|(_, port)| port),
        None => hostport.rsplit_once(':').map(|(_, port)| port),
    };
    let ip = match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Some(match port {
        Some(port) => format!("{scheme}://{ip}:{port}{path}"),
        None => format!("{scheme}://{ip}{path}"),
    })
}

/// An endpoint for `url` that dials `addr` (when given) and checks the server's certificate
/// for the URL's host name, with the same TLS, identity and timeouts as
/// [`crate::endpoint_with_identity`].
pub fn endpoint_at(
    url: &str,
    addr: Option<IpAddr>,
    tls: Option<&crate::ClientTls>,
    identity: Option<&crate::ClientIdentity>,
    insecure_plaintext: bool,
) -> Result<Endpoint, TransportError> {
    let Some(addr) = addr else {
        return crate::endpoint_with_identity(url, tls, identity, insecure_plaintext);
    };
    let host =
        host_of(url).ok_or_else(|| TransportError::Config(format!("{url}: no host in the URL")))?;
    let at =
        url_at(url, addr).ok_or_else(|| TransportError::Config(format!("{url}: not a URL")))?;
    crate::endpoint_with_identity_named(&at, tls, identity, insecure_plaintext, Some(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_one_address_and_keep_their_name() {
        assert_eq!(
            host_of("https://dispatcher.passage.svc:8443").as_deref(),
            Some("dispatcher.passage.svc")
        );
        assert_eq!(host_of("http://[::1]:8443/").as_deref(), Some("::1"));
        assert_eq!(host_of("https://dispatcher").as_deref(), Some("dispatcher"));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            url_at("https://dispatcher.passage.svc:8443", ip).as_deref(),
            Some("https://10.1.2.3:8443")
        );
        assert_eq!(
            url_at("https://dispatcher/x", ip).as_deref(),
            Some("https://10.1.2.3/x")
        );
        let v6: IpAddr = "fd00::7".parse().unwrap();
        assert_eq!(
            url_at("https://dispatcher:8443", v6).as_deref(),
            Some("https://[fd00::7]:8443")
        );
        assert!(
            resolver(&["dns.example".into()], "dispatcher_name_servers")
                .is_err_and(|e| e.to_string().contains("not an IP address"))
        );
    }
}

//! Dialling through an HTTP CONNECT proxy, as corporate networks require of outbound traffic.

use std::net::IpAddr;

use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::TransportError;

/// Longest proxy response header accepted.
const MAX_RESPONSE: usize = 8 * 1024;

/// The proxy to use for `url`: `explicit` (configured) if given; else `HTTPS_PROXY` /
/// `HTTP_PROXY` (either case) from the environment, unless the destination is loopback or
/// `NO_PROXY` lists its host.
pub fn proxy_for(url: &str, explicit: Option<&str>) -> Option<String> {
    if let Some(proxy) = explicit {
        return Some(proxy.to_owned());
    }
    let uri: Uri = url.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    let env = |name: &str| {
        std::env::var(name)
            .or_else(|_| std::env::var(name.to_ascii_lowercase()))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let no_proxy = env("NO_PROXY").unwrap_or_default();
    let bypass = no_proxy.split(',').map(str::trim).any(|entry| {
        entry == "*"
            || (!entry.is_empty()
                && (host == entry.trim_start_matches('.')
                    || host.ends_with(&format!(".{}", entry.trim_start_matches('.')))))
    });
    if bypass {
        return None;
    }
    if uri.scheme_str() == Some("https") {
        env("HTTPS_PROXY")
    } else {
        env("HTTP_PROXY")
    }
}

/// Opens a tunnel to `target` through the proxy at `proxy` (`http://host:port`).
async fn tunnel(proxy: &str, target: &Uri) -> std::io::Result<TcpStream> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let proxy_uri: Uri = proxy
        .parse()
        .map_err(|_| invalid(format!("proxy URL {proxy:?}")))?;
    if proxy_uri.scheme_str() != Some("http") {
        return Err(invalid(format!(
            "proxy URL {proxy:?} must be http://host:port"
        )));
    }
    let proxy_host = proxy_uri
        .host()
        .ok_or_else(|| invalid(format!("proxy URL {proxy:?} has no host")))?;
    let proxy_port = proxy_uri.port_u16().unwrap_or(80);
    let host = target
        .host()
        .ok_or_else(|| invalid("target has no host".into()))?;
    let port = target
        .port_u16()
        .unwrap_or(if target.scheme_str() == Some("https") {
            443
        } else {
            80
        });

    let mut stream = TcpStream::connect((proxy_host, proxy_port)).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await?;
    // Read the response header byte by byte: nothing of the tunnelled stream may be consumed.
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() >= MAX_RESPONSE {
            return Err(invalid("proxy response header too long".into()));
        }
        let byte = stream.read_u8().await?;
        response.push(byte);
    }
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or_default();
    let ok =
        status_line.starts_with("HTTP/1.") && status_line.split_whitespace().nth(1) == Some("200");
    if !ok {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("proxy refused CONNECT {host}:{port}: {status_line}"),
        ));
    }
    Ok(stream)
}

/// Connects `endpoint` through the proxy at `proxy`; TLS (if configured) runs inside the tunnel.
pub async fn connect_via(endpoint: &Endpoint, proxy: &str) -> Result<Channel, TransportError> {
    let proxy = proxy.to_owned();
    let connector = tower::service_fn(move |uri: Uri| {
        let proxy = proxy.clone();
        async move { tunnel(&proxy, &uri).await.map(TokioIo::new) }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|err| TransportError::Config(format!("connecting through the proxy: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_proxy_is_always_used_and_the_environment_skips_loopback() {
        assert_eq!(
            proxy_for(
                "https://dispatcher.example.com:8443",
                Some("http://proxy:3128")
            )
            .as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            proxy_for("https://127.0.0.1:8443", Some("http://proxy:3128")).as_deref(),
            Some("http://proxy:3128")
        );
        // Without configuration, loopback destinations never take the environment's proxy.
        for url in [
            "https://127.0.0.1:8443",
            "https://localhost:8443",
            "https://[::1]:8443",
        ] {
            assert_eq!(proxy_for(url, None), None, "{url}");
        }
    }
}

//! The original destination of a connection that iptables redirected to ward
//! (`SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for IPv6), read through socket2's safe API.
//!
//! A `REDIRECT` in the nat table rewrites the destination before the socket is accepted; the
//! kernel's connection tracking remembers where the connection was going, and this asks it.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::TcpStream;

/// Where the peer meant to connect before iptables redirected it to ward.
///
/// IPv4 connections (also IPv4 peers on a dual-stack `[::]` listener, seen as `::ffff:a.b.c.d`)
/// are asked with `SO_ORIGINAL_DST`, IPv6 ones with `IP6T_SO_ORIGINAL_DST`. The answer is
/// canonical: an IPv4-mapped IPv6 address comes back as IPv4.
///
/// A connection that was not redirected has no NAT entry: the kernel answers `ENOENT`
/// (or, when connection tracking is loaded, the socket's own local address, which callers
/// recognise as "aimed at ward itself").
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    let asked = match local.ip() {
        IpAddr::V4(_) => sock.original_dst_v4(),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            sock.original_dst_v4().or_else(|_| sock.original_dst_v6())
        }
        IpAddr::V6(_) => sock.original_dst_v6(),
    };
    let addr = asked.map_err(|e| explain(e, local))?;
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the original destination of a connection to {local} is not an IP address"),
        )
    })?;
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

fn explain(e: io::Error, local: SocketAddr) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "no original destination for a connection to {local} ({e}): it was not redirected by \
             iptables; install the capture rules with `ward iptables install`, or use an explicit \
             listener with `forward:`"
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    async fn pair(bind: &str) -> Option<(TcpStream, TcpStream)> {
        let listener = tokio::net::TcpListener::bind(bind).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let client = TcpStream::connect(addr).await.ok()?;
        let (server, _) = listener.accept().await.ok()?;
        Some((client, server))
    }

    /// Not redirected: an error that says what to do, or (conntrack loaded, no NAT) the
    /// socket's own address. Never a panic, never some other address.
    async fn not_redirected(bind: &str) {
        let Some((_client, server)) = pair(bind).await else {
            eprintln!("skipped: cannot bind {bind} here");
            return;
        };
        let local = server.local_addr().unwrap();
        match original_dst(&server) {
            Ok(addr) => assert_eq!(
                addr, local,
                "no NAT: the original destination is the socket itself"
            ),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("was not redirected"), "{msg}");
                assert!(msg.contains("ward iptables install"), "{msg}");
            }
        }
    }

    #[tokio::test]
    async fn ipv4_not_redirected() {
        not_redirected("127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn ipv6_not_redirected() {
        not_redirected("[::1]:0").await;
    }

    #[tokio::test]
    async fn ipv4_peer_on_dual_stack_listener() {
        // An IPv4 client on a [::] listener: the local address is v4-mapped; the answer, if
        // any, is canonical IPv4.
        let Ok(listener) = tokio::net::TcpListener::bind("[::]:0").await else {
            eprintln!("skipped: no IPv6 here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let Ok(_client) = TcpStream::connect(("127.0.0.1", port)).await else {
            eprintln!("skipped: [::] does not accept IPv4 here");
            return;
        };
        let (server, _) = listener.accept().await.unwrap();
        match original_dst(&server) {
            Ok(addr) => assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port))),
            Err(e) => assert!(e.to_string().contains("was not redirected"), "{e}"),
        }
    }
}

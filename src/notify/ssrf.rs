//! Keeping outbound webhooks off addresses that are not the merchant's public app: loopback,
//! private, link-local, unique-local, CGNAT, "this network", multicast, reserved and the cloud
//! metadata services, also when written as IPv4-mapped, IPv4-translated, NAT64 or 6to4 IPv6
//! (local-use NAT64, 64:ff9b:1::/48, is refused whole). The check is made on the
//! address actually connected to: [`FilteringResolver`] drops forbidden addresses from every DNS
//! answer (so a name that resolves to a public address when saved and to 10.0.0.1 when sent —
//! DNS rebinding — cannot slip through), and a URL with a literal address is checked before
//! sending, since it is never resolved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether delivering to `ip` is refused (unless private addresses are allowed).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // 0.0.0.0/8 "this network"
        || ip.is_loopback() // 127/8
        || a == 10 // 10/8
        || (a == 172 && (16..=31).contains(&b)) // 172.16/12
        || (a == 192 && b == 168) // 192.168/16
        || (a == 169 && b == 254) // 169.254/16 link-local, 169.254.169.254 metadata
        || (a == 100 && (64..=127).contains(&b)) // 100.64/10 CGNAT (100.100.100.200: Alibaba metadata)
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24 IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18/15 benchmarking
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (first & 0xfe00) == 0xfc00 // fc00::/7 unique-local (fd00:ec2::254: AWS metadata)
        || (first & 0xff00) == 0xff00 // multicast
        || (first & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || ip.segments()[..3] == [0x64, 0xff9b, 1] // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): never public
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) or
/// NAT64 (64:ff9b::a.b.c.d) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    // ::ffff:0:a.b.c.d, IPv4-translated (SIIT, RFC 2765).
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail);
    }
    // 2002:a.b.c.d::/48, 6to4 (RFC 3056): the relay delivers to a.b.c.d.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

/// Why `url` may not be a webhook endpoint (checked when it is saved and before each attempt):
/// not http(s), credentials in it, https missing in production, or a literal forbidden address.
/// A name is checked when it is resolved, by [`FilteringResolver`].
pub fn check_url(url: &str, production: bool, allow_private: bool) -> Result<url::Url, String> {
    let u = url::Url::parse(url).map_err(|_| "must be an absolute http(s) URL".to_owned())?;
    match u.scheme() {
        "https" => {}
        "http" if !production => {}
        "http" => return Err("must be https in production".to_owned()),
        _ => return Err("must be an absolute http(s) URL".to_owned()),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".to_owned());
    }
    let ip = match u.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("must name a host".to_owned()),
    };
    if let Some(ip) = ip {
        if !allow_private && is_forbidden(ip) {
            return Err(format!(
                "{ip} is a private, loopback, link-local or metadata address (TOLLGATE_WEBHOOK_ALLOW_PRIVATE is off)"
            ));
        }
    }
    Ok(u)
}

/// The system resolver, with forbidden addresses removed from its answers; a name left with no
/// address fails to resolve, saying why.
#[derive(Debug, Clone, Default)]
pub struct FilteringResolver;

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| !is_forbidden(a.ip())).collect();
            if allowed.is_empty() {
                let refused: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(
                    format!("refused: {host} resolves only to private or reserved addresses ({})", refused.join(", ")).into()
                );
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_and_public_ones_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:7f00:1::",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:a00:1:1::1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad} should be refused");
        }
        for ok in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_forbidden(ok.parse().unwrap()), "{ok} should pass");
        }
    }

    #[test]
    fn urls_are_checked_when_saved() {
        assert!(check_url("https://example.com/hook", true, false).is_ok());
        assert!(check_url("http://example.com/hook", true, false).unwrap_err().contains("https"));
        assert!(check_url("http://example.com/hook", false, false).is_ok());
        assert!(check_url("https://169.254.169.254/latest", true, false).is_err());
        assert!(check_url("https://[::ffff:127.0.0.1]/", true, false).is_err());
        assert!(check_url("http://127.0.0.1:9/", false, true).is_ok());
        assert!(check_url("https://user:pw@example.com/", true, false).is_err());
        assert!(check_url("ftp://example.com/", false, true).is_err());
    }
}

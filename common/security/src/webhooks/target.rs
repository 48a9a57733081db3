//! Where a webhook may be sent: the server-side request forgery (SSRF) guard.
//!
//! A subscription URL must be `http` or `https` with a host, no user-info and at most 2,048
//! characters. Unless `WEBHOOK_ALLOW_PRIVATE=1`, no address it resolves to may be loopback,
//! private, link-local (cloud metadata lives at 169.254.169.254), shared (CGNAT), multicast,
//! documentation or otherwise reserved: the pipeline must not become a proxy into the network
//! it runs in. The check runs when the subscription is created (to answer 422 early) and again
//! on every connection the dispatcher opens, against the addresses it actually connects to, so
//! a DNS answer that changes later (rebinding) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL is not an acceptable webhook target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an absolute URL.
    #[error("not a valid absolute URL: {0}")]
    NotUrl(String),
    /// Neither http nor https.
    #[error("only http and https URLs are accepted")]
    Scheme,
    /// User-info (`user:password@`) would leak credentials into logs and listings.
    #[error("credentials in the URL are not accepted")]
    Credentials,
    /// Longer than [`MAX_URL_LEN`].
    #[error("longer than {MAX_URL_LEN} characters")]
    TooLong,
    /// The host is, or resolves to, an address in a private, loopback or reserved range.
    #[error("{0} is a private, loopback or reserved address")]
    PrivateAddress(IpAddr),
    /// The host name does not resolve.
    #[error("the host does not resolve: {0}")]
    Unresolvable(String),
}

impl TargetError {
    /// A machine-readable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            TargetError::PrivateAddress(_) => "private_address",
            TargetError::Unresolvable(_) => "unresolvable_host",
            TargetError::Scheme => "unsupported_scheme",
            _ => "invalid_url",
        }
    }
}

/// Parses and checks the syntax of a webhook URL; an IP-literal host is checked against the
/// private ranges here as well (it is never resolved).
pub fn parse(raw: &str, allow_private: bool) -> Result<Url, TargetError> {
    if raw.len() > MAX_URL_LEN {
        return Err(TargetError::TooLong);
    }
    let url = Url::parse(raw.trim()).map_err(|e| TargetError::NotUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Credentials);
    }
    if url.port() == Some(0) {
        return Err(TargetError::NotUrl("port 0 cannot be connected to".into()));
    }
    if url.fragment().is_some() {
        // A fragment is never sent to the server: the URL would not say where deliveries go.
        return Err(TargetError::NotUrl(
            "a fragment (#…) is never sent; leave it out".into(),
        ));
    }
    match url.host() {
        None => return Err(TargetError::NotUrl("no host".into())),
        Some(Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow_private)?,
        Some(Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow_private)?,
        Some(Host::Domain(_)) => {}
    }
    Ok(url)
}

/// Refuses `ip` when private addresses are not allowed and it is not public.
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(TargetError::PrivateAddress(ip))
    }
}

/// Resolves the URL's host and checks every address (creation-time check; the dispatcher
/// checks again at connection time).
/// With `allow_private` the host must still resolve; only the address ranges are not checked.
pub async fn check_resolved(url: &Url, allow_private: bool) -> Result<(), TargetError> {
    let Some(Host::Domain(host)) = url.host() else {
        return Ok(()); // IP literals were checked by `parse`
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| TargetError::Unresolvable("DNS timed out".into()))?
    .map_err(|e| TargetError::Unresolvable(e.to_string()))?
    .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable("no address".into()));
    }
    for a in addrs {
        check_ip(a.ip(), allow_private)?;
    }
    Ok(())
}

/// Whether an address is globally routable unicast (what a webhook may reach by default).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127                            // loopback
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge that one.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
        || (s[0] & 0xfe00) == 0xfc00     // unique local
        || (s[0] & 0xffc0) == 0xfe80     // link-local
        || (s[0] & 0xff00) == 0xff00     // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn private_loopback_and_reserved_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must not be public");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn only_http_and_https_urls_without_credentials_are_accepted() {
        assert!(parse("https://hooks.example.com/slotq?x=1", false).is_ok());
        assert!(parse("http://hooks.example.com:8080/", false).is_ok());
        assert_eq!(
            parse("ftp://example.com/", false).err(),
            Some(TargetError::Scheme)
        );
        assert_eq!(
            parse("file:///etc/passwd", false).err(),
            Some(TargetError::Scheme)
        );
        assert_eq!(
            parse("https://user:pw@example.com/", false).err(),
            Some(TargetError::Credentials)
        );
        assert!(matches!(
            parse("not a url", false),
            Err(TargetError::NotUrl(_))
        ));
        for raw in [
            "http://hooks.example.com:0/x",
            "https://hooks.example.com/x#frag",
        ] {
            assert!(
                matches!(parse(raw, false), Err(TargetError::NotUrl(_))),
                "{raw}"
            );
        }
        assert!(matches!(
            parse(&format!("https://e.com/{}", "a".repeat(3000)), false),
            Err(TargetError::TooLong)
        ));
    }

    #[test]
    fn ip_literals_in_private_ranges_need_the_allow_private_flag() {
        assert_eq!(
            parse("http://127.0.0.1:9000/hook", false).err(),
            Some(TargetError::PrivateAddress(ip("127.0.0.1")))
        );
        assert_eq!(
            parse("http://[::1]:9000/hook", false).err(),
            Some(TargetError::PrivateAddress(ip("::1")))
        );
        assert!(parse("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[tokio::test]
    async fn host_names_resolving_to_loopback_are_refused() {
        let url = parse("http://localhost:9000/hook", false).expect("syntax is fine");
        assert!(matches!(
            check_resolved(&url, false).await,
            Err(TargetError::PrivateAddress(_))
        ));
        assert_eq!(check_resolved(&url, true).await, Ok(()));
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_refused_even_when_private_addresses_are_allowed() {
        let url = parse("https://no-such-host.invalid/x", true).expect("syntax is fine");
        for allow_private in [false, true] {
            assert!(matches!(
                check_resolved(&url, allow_private).await,
                Err(TargetError::Unresolvable(_))
            ));
        }
    }
}

//! The client address of an HTTP request: the socket's peer, or, when the
//! peer is a trusted reverse proxy (`trusted_proxies`), the address that
//! proxy chain says the request came from (`X-Forwarded-For`). Per-address
//! limits (login failures, registrations, the REST rate) count by it.

use std::net::{IpAddr, SocketAddr};

use poem::Request;

/// A network: an address and the number of leading bits that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `a.b.c.d/n`, `x::y/n`, or a single address.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0-{max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// A comma-separated list of CIDRs or addresses (empty: none).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let nets = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(IpNet::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client behind `peer`, given the request's `X-Forwarded-For`
    /// values in the order they came. Each proxy appends the address it
    /// was reached from, so the list is read from the right: trusted
    /// proxies are skipped, and the first other address is the client.
    /// Anything further left was written by the client itself and proves
    /// nothing. An entry that is not an address ends the walk at the last
    /// proxy seen (a trusted proxy writes addresses only).
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client address of a request, put into its data by the HTTP
/// middleware (see `controller::routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client address of `req`: what the middleware found, else the peer
/// (`None` for a peer that is no IP socket, e.g. in unit tests).
pub fn client_addr(req: &Request) -> Option<IpAddr> {
    req.data::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| req.remote_addr().as_socket_addr().map(|a| a.ip()))
}

/// Finds the client address of `req` by `proxies`.
pub fn find_client_addr(req: &Request, proxies: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr()?.ip();
    let values = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    Some(proxies.client(peer, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6 is v4");
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_parse() {
        assert!(TrustedProxies::parse("").unwrap().nets.is_empty());
        let t = TrustedProxies::parse(" 10.0.0.0/8 , 192.168.1.1,").unwrap();
        assert_eq!(t.nets.len(), 2);
        assert!(TrustedProxies::parse("10.0.0.0/8,bogus").is_err());
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let client = |peer: &str, xff: &[&str]| t.client(ip(peer), xff.iter().copied());
        // An untrusted peer's header is ignored.
        assert_eq!(client("1.2.3.4", &["9.9.9.9"]), ip("1.2.3.4"));
        // A trusted peer without the header is the client.
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
        // What the client wrote itself (on the left) is skipped.
        assert_eq!(
            client("10.0.0.1", &["6.6.6.6, 5.5.5.5", "10.0.0.7"]),
            ip("5.5.5.5")
        );
        assert_eq!(client("10.0.0.1", &["5.5.5.5:4711"]), ip("5.5.5.5"));
        // Only trusted hops: the leftmost of them.
        assert_eq!(client("10.0.0.1", &["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"));
        // Garbage ends the walk at the last proxy seen.
        assert_eq!(client("10.0.0.1", &["unknown, 10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.1", &["unknown"]), ip("10.0.0.1"));
    }
}

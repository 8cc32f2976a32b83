//! What a pool's master process is started with, decided without I/O: the address it
//! is published at, and the placeholders of its command and environment.

use std::net::IpAddr;

use glory_keymaster::schema::MasterSpec;
use glory_protocol::Inventory;

/// Placeholders a master spec's command words and environment values may hold.
pub const PLACEHOLDERS: [&str; 4] = ["{port}", "{node}", "{pool}", "{epoch}"];

/// The values of the placeholders for one start of a master.
pub struct Placeholders<'a> {
    pub port: Option<u16>,
    pub node: &'a str,
    pub pool: &'a str,
    pub epoch: u64,
}

impl Placeholders<'_> {
    /// `text` with every known placeholder replaced, in one pass (a value is never
    /// scanned again). `{port}` stays as it is when the spec has no port; such a spec
    /// is refused when the pool is created.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let value = if rest.starts_with("{port}") {
                self.port.map(|p| p.to_string())
            } else if rest.starts_with("{node}") {
                Some(self.node.to_string())
            } else if rest.starts_with("{pool}") {
                Some(self.pool.to_string())
            } else if rest.starts_with("{epoch}") {
                Some(self.epoch.to_string())
            } else {
                None
            };
            match value {
                Some(v) => {
                    let end = rest.find('}').map_or(rest.len(), |i| i + 1);
                    out.push_str(&v);
                    rest = &rest[end..];
                }
                None => {
                    out.push('{');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Why a master spec cannot be used: a placeholder it needs has no value. The message
/// names the field and the placeholder.
pub fn check_placeholders(spec: &MasterSpec) -> Result<(), String> {
    if spec.port.is_some() {
        return Ok(());
    }
    if spec.command.iter().any(|w| w.contains("{port}")) {
        return Err("master.command: uses {port} but master.port is not set".into());
    }
    if let Some((k, _)) = spec.env.iter().find(|(_, v)| v.contains("{port}")) {
        return Err(format!(
            "master.env: {k} uses {{port}} but master.port is not set"
        ));
    }
    Ok(())
}

/// An address other machines can use: not unspecified, not loopback, not link-local
/// (an IPv6 link-local address means nothing without the scope of the machine that
/// uses it, and IPv4 link-local is not routed).
fn reachable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_loopback() && !v6.is_unicast_link_local(),
    }
}

/// The IP a master on a node is published at: the address the node reached its group
/// master from (it is on a network the masters share with it); else the node's first
/// inventory address that others can reach; else its loopback address when that is how
/// it reached its group master (every part on one machine). `None`: nothing usable.
pub fn publish_ip(reached_from: Option<&str>, inventory: &Inventory) -> Option<IpAddr> {
    let reached = reached_from
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical());
    if let Some(ip) = reached.filter(reachable) {
        return Some(ip);
    }
    let listed = inventory.ip_addresses().find(reachable);
    listed.or(reached.filter(|ip| ip.is_loopback()))
}

/// `ip`, `ip:port` or `[ipv6]:port`.
pub fn format_address(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::Nic;

    fn inventory(addresses: &[&str]) -> Inventory {
        Inventory {
            nics: vec![Nic {
                name: "eth0".into(),
                mac: String::new(),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_published_address_is_one_others_can_use() {
        let cases: &[(Option<&str>, &[&str], Option<&str>)] = &[
            // The address the node reached its group master from wins.
            (Some("10.0.0.5"), &["192.168.1.2/24"], Some("10.0.0.5")),
            (Some("::ffff:10.0.0.5"), &[], Some("10.0.0.5")),
            (Some("2001:db8::5"), &["10.0.0.5/24"], Some("2001:db8::5")),
            // Not a link-local one: it has no scope anyone else could use.
            (
                Some("fe80::fc:ff:fe00:1"),
                &["fe80::fc:ff:fe00:1/64", "10.1.2.3/24"],
                Some("10.1.2.3"),
            ),
            // Unknown (older group master): the first reachable inventory address.
            (
                None,
                &[
                    "127.0.0.1/8",
                    "::1/128",
                    "fe80::1/64",
                    "169.254.1.1/16",
                    "10.9.9.9/8",
                ],
                Some("10.9.9.9"),
            ),
            (None, &["fe80::fc:ff:fe00:1/64"], None),
            (None, &[], None),
            // Everything on one machine: loopback is what works.
            (Some("127.0.0.1"), &["fe80::1/64"], Some("127.0.0.1")),
            (Some("127.0.0.1"), &["10.0.0.7/24"], Some("10.0.0.7")),
            (Some("garbage"), &["10.0.0.7/24"], Some("10.0.0.7")),
        ];
        for (reached, addresses, want) in cases {
            let got = publish_ip(*reached, &inventory(addresses));
            assert_eq!(
                got,
                want.map(|w| w.parse().unwrap()),
                "reached from {reached:?}, inventory {addresses:?}"
            );
        }
        assert_eq!(
            format_address("2001:db8::5".parse().unwrap(), Some(7000)),
            "[2001:db8::5]:7000"
        );
        assert_eq!(
            format_address("10.0.0.5".parse().unwrap(), Some(7000)),
            "10.0.0.5:7000"
        );
        assert_eq!(
            format_address("10.0.0.5".parse().unwrap(), None),
            "10.0.0.5"
        );
    }

    #[test]
    fn placeholders_are_substituted_once() {
        let p = Placeholders {
            port: Some(18999),
            node: "n-1",
            pool: "fs",
            epoch: 7,
        };
        assert_eq!(
            p.apply("--listen=:{port} --id {node}/{pool}@{epoch}"),
            "--listen=:18999 --id n-1/fs@7"
        );
        assert_eq!(
            p.apply("{{port}} {unknown} ${HOME} {"),
            "{18999} {unknown} ${HOME} {"
        );
        assert_eq!(p.apply("{port}{port}"), "1899918999");
        let no_port = Placeholders { port: None, ..p };
        assert_eq!(no_port.apply("-p {port}"), "-p {port}");
    }

    #[test]
    fn port_placeholder_needs_a_port() {
        let mut spec = MasterSpec {
            command: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "{port}".into(),
            ],
            ..Default::default()
        };
        let err = check_placeholders(&spec).unwrap_err();
        assert!(
            err.contains("{port}") && err.contains("master.port"),
            "{err}"
        );
        spec.port = Some(8000);
        assert!(check_placeholders(&spec).is_ok());
        let env_only = MasterSpec {
            env: [("LISTEN".to_string(), ":{port}".to_string())].into(),
            ..Default::default()
        };
        let err = check_placeholders(&env_only).unwrap_err();
        assert!(err.contains("master.env: LISTEN"), "{err}");
    }
}

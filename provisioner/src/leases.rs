//! DHCP leases of the boot network, pure (time passed in): reservations by MAC, a
//! range to allocate from, offers held briefly, leases that expire, and a JSON form
//! that is written after every change so that a restart never hands an address out
//! twice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A hardware address, `aa:bb:cc:dd:ee:ff`.
pub type Mac = [u8; 6];

pub fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<Mac> {
    let parts: Vec<u8> = text
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD_MS: u64 = 60_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// First and last address handed out (inclusive).
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub lease_seconds: u32,
    /// Fixed addresses by MAC (they may lie outside the range).
    pub reservations: BTreeMap<Mac, Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub expires_ms: u64,
    /// False while only offered.
    pub bound: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseError {
    /// No free address in the range.
    Exhausted,
    /// The client asked for an address that is not its to have (NAK).
    NotYours(Ipv4Addr),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Exhausted => f.write_str("no free address in the range"),
            LeaseError::NotYours(ip) => write!(f, "{ip} is not this client's to have"),
        }
    }
}

pub struct Leases {
    config: LeaseConfig,
    by_mac: BTreeMap<Mac, Lease>,
    /// Bumped when a lease is bound or freed (what must be saved; offers need not be).
    generation: u64,
}

impl Leases {
    pub fn new(config: LeaseConfig) -> Self {
        Leases {
            config,
            by_mac: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The leases as they were saved ([`Leases::to_json`]).
    pub fn restore(config: LeaseConfig, json: &str) -> Result<Self, String> {
        let saved: Vec<Lease> =
            serde_json::from_str(json).map_err(|e| format!("leases file: {e}"))?;
        let mut leases = Leases::new(config);
        for lease in saved {
            let mac = parse_mac(&lease.mac)
                .ok_or_else(|| format!("leases file: bad MAC {:?}", lease.mac))?;
            leases.by_mac.insert(mac, lease);
        }
        Ok(leases)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.by_mac.values().collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into())
    }

    /// Changes when a lease is bound or freed: the leases must be saved again.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn get(&self, mac: &Mac) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// Whether `ip` is held, at `now_ms`, by a client other than `mac` (a lease or an
    /// offer not expired, or a reservation).
    fn taken_by_other(&self, ip: Ipv4Addr, mac: &Mac, now_ms: u64) -> bool {
        self.config
            .reservations
            .iter()
            .any(|(m, r)| *r == ip && m != mac)
            || self
                .by_mac
                .iter()
                .any(|(m, l)| m != mac && l.ip == ip && l.expires_ms > now_ms)
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        ip >= self.config.first && ip <= self.config.last
    }

    /// The address to offer `mac` (held for [`OFFER_HOLD_MS`]): its reservation, its
    /// current lease, the address it asks for if free, or the lowest free one.
    pub fn offer(
        &mut self,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        now_ms: u64,
    ) -> Result<Ipv4Addr, LeaseError> {
        let ip = if let Some(ip) = self.config.reservations.get(&mac) {
            *ip
        } else if let Some(l) = self
            .by_mac
            .get(&mac)
            .filter(|l| !self.taken_by_other(l.ip, &mac, now_ms) && self.in_range(l.ip))
        {
            l.ip
        } else if let Some(ip) =
            requested.filter(|ip| self.in_range(*ip) && !self.taken_by_other(*ip, &mac, now_ms))
        {
            ip
        } else {
            // What others hold, gathered once: the scan is then linear in the range.
            let taken: std::collections::HashSet<Ipv4Addr> = self
                .config
                .reservations
                .iter()
                .filter(|(m, _)| **m != mac)
                .map(|(_, ip)| *ip)
                .chain(
                    self.by_mac
                        .iter()
                        .filter(|(m, l)| **m != mac && l.expires_ms > now_ms)
                        .map(|(_, l)| l.ip),
                )
                .collect();
            let (first, last) = (u32::from(self.config.first), u32::from(self.config.last));
            (first..=last)
                .map(Ipv4Addr::from)
                .find(|ip| !taken.contains(ip))
                .ok_or(LeaseError::Exhausted)?
        };
        let bound = self
            .by_mac
            .get(&mac)
            .is_some_and(|l| l.bound && l.ip == ip && l.expires_ms > now_ms);
        let expires_ms = match self.by_mac.get(&mac) {
            Some(l) if bound => l.expires_ms,
            _ => now_ms + OFFER_HOLD_MS,
        };
        self.by_mac.insert(
            mac,
            Lease {
                mac: mac_text(&mac),
                ip,
                expires_ms,
                bound,
            },
        );
        Ok(ip)
    }

    /// Bind `ip` to `mac` for the lease time (ACK), or refuse (NAK) when it is not
    /// this client's to have.
    pub fn request(&mut self, mac: Mac, ip: Ipv4Addr, now_ms: u64) -> Result<Lease, LeaseError> {
        let reserved = self.config.reservations.get(&mac);
        let allowed = match reserved {
            Some(r) => *r == ip,
            None => self.in_range(ip) && !self.taken_by_other(ip, &mac, now_ms),
        };
        if !allowed {
            return Err(LeaseError::NotYours(ip));
        }
        let lease = Lease {
            mac: mac_text(&mac),
            ip,
            expires_ms: now_ms + u64::from(self.config.lease_seconds) * 1000,
            bound: true,
        };
        self.by_mac.insert(mac, lease.clone());
        self.generation += 1;
        Ok(lease)
    }

    /// The client gave its address back.
    pub fn release(&mut self, mac: &Mac) {
        if self.by_mac.remove(mac).is_some() {
            self.generation += 1;
        }
    }

    /// Forget what expired before `now_ms` (their addresses are free again).
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.by_mac.len();
        self.by_mac.retain(|_, l| l.expires_ms > now_ms);
        let gone = before - self.by_mac.len();
        if gone > 0 {
            self.generation += 1;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        [0x52, 0x54, 0, 0, 0, n]
    }

    fn config() -> LeaseConfig {
        LeaseConfig {
            first: Ipv4Addr::new(10, 9, 0, 10),
            last: Ipv4Addr::new(10, 9, 0, 12),
            lease_seconds: 600,
            reservations: [(mac(9), Ipv4Addr::new(10, 9, 0, 5))].into(),
        }
    }

    #[test]
    fn allocation_reservations_offers_and_expiry() {
        let mut l = Leases::new(config());
        let ip = |n| Ipv4Addr::new(10, 9, 0, n);
        assert_eq!(l.offer(mac(1), None, 0), Ok(ip(10)));
        // An offer is held: the next client gets the next address.
        assert_eq!(l.offer(mac(2), Some(ip(10)), 0), Ok(ip(11)));
        assert_eq!(
            l.request(mac(1), ip(10), 1_000).unwrap().expires_ms,
            601_000
        );
        // Another client may not take a bound address.
        assert_eq!(
            l.request(mac(3), ip(10), 2_000),
            Err(LeaseError::NotYours(ip(10)))
        );
        // The reservation, even outside the range, and only for its MAC.
        assert_eq!(l.offer(mac(9), None, 0), Ok(ip(5)));
        assert_eq!(
            l.request(mac(4), ip(5), 0),
            Err(LeaseError::NotYours(ip(5)))
        );
        // The range runs out while offers are held...
        assert_eq!(l.offer(mac(3), None, 0), Ok(ip(12)));
        assert_eq!(l.offer(mac(4), None, 0), Err(LeaseError::Exhausted));
        // ...and frees up when the unanswered offers expire.
        assert_eq!(l.expire(OFFER_HOLD_MS + 1), 3);
        assert_eq!(l.offer(mac(4), None, OFFER_HOLD_MS + 1), Ok(ip(11)));
        // A bound client keeps its address; after its lease, it is free again.
        assert_eq!(l.offer(mac(1), None, 300_000), Ok(ip(10)));
        l.expire(601_001);
        assert_eq!(l.offer(mac(5), Some(ip(10)), 601_001), Ok(ip(10)));
    }

    #[test]
    fn leases_survive_a_restart_and_no_address_is_handed_out_twice() {
        let mut l = Leases::new(config());
        let a = l.offer(mac(1), None, 0).unwrap();
        l.request(mac(1), a, 0).unwrap();
        let json = l.to_json();
        let mut again = Leases::restore(config(), &json).unwrap();
        assert_eq!(again.get(&mac(1)).map(|l| l.ip), Some(a));
        let b = again.offer(mac(2), Some(a), 10).unwrap();
        assert_ne!(a, b, "a restarted server must not hand out a bound address");
        assert!(Leases::restore(config(), "[{\"mac\": \"zz\"}]").is_err());
        assert_eq!(parse_mac("52:54:00:00:00:01"), Some(mac(1)));
        assert_eq!(mac_text(&mac(1)), "52:54:00:00:00:01");
    }
}

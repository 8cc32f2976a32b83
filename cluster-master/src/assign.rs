//! Group assignment: pure code. A new node goes to a group that already holds its
//! subnet (racks and subnets line up with groups), otherwise to the least loaded group;
//! never past the group size limit. Groups whose master is connected are preferred.

use std::collections::HashMap;

use glory_protocol::Inventory;

/// What assignment needs to know about a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLoad {
    pub id: String,
    pub members: usize,
    /// Subnets of its members, with how many members sit in each.
    pub subnets: HashMap<String, usize>,
    pub connected: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("no group exists yet: start a group master first")]
    NoGroups,
    #[error("all {groups} groups are full ({limit} nodes each): add a group master")]
    NoCapacity { groups: usize, limit: usize },
}

/// The subnets a node sits in, e.g. `10.0.3.0/24`: global addresses only (loopback,
/// link-local and unspecified addresses say nothing about where a server is).
pub fn node_subnets(inventory: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = inventory
        .nics
        .iter()
        .flat_map(|nic| nic.addresses.iter())
        .filter_map(|addr| addr.parse::<ipnet::IpNet>().ok())
        .filter(|net| {
            let ip = net.addr();
            let link_local = match ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
            !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
        })
        .map(|net| net.trunc().to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Choose the group for a node in `subnets`.
pub fn assign_group(
    groups: &[GroupLoad],
    subnets: &[String],
    limit: usize,
) -> Result<String, AssignError> {
    if groups.is_empty() {
        return Err(AssignError::NoGroups);
    }
    let open: Vec<&GroupLoad> = groups.iter().filter(|g| g.members < limit).collect();
    if open.is_empty() {
        return Err(AssignError::NoCapacity {
            groups: groups.len(),
            limit,
        });
    }
    let connected: Vec<&GroupLoad> = open.iter().copied().filter(|g| g.connected).collect();
    let pool = if connected.is_empty() {
        open
    } else {
        connected
    };
    let least_loaded = |candidates: &mut dyn Iterator<Item = &&GroupLoad>| {
        candidates
            .min_by(|a, b| a.members.cmp(&b.members).then_with(|| a.id.cmp(&b.id)))
            .map(|g| g.id.clone())
    };
    let same_subnet = least_loaded(&mut pool.iter().filter(|g| {
        subnets
            .iter()
            .any(|s| g.subnets.get(s).is_some_and(|n| *n > 0))
    }));
    match same_subnet {
        Some(id) => Ok(id),
        None => least_loaded(&mut pool.iter()).ok_or(AssignError::NoCapacity {
            groups: groups.len(),
            limit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::Nic;
    use proptest::prelude::*;

    fn group(id: &str, members: usize, subnets: &[&str], connected: bool) -> GroupLoad {
        GroupLoad {
            id: id.into(),
            members,
            subnets: subnets.iter().map(|s| (s.to_string(), 1)).collect(),
            connected,
        }
    }

    #[test]
    fn same_subnet_wins_over_least_loaded() {
        let groups = [
            group("g00", 10, &["10.0.0.0/24"], true),
            group("g01", 0, &[], true),
        ];
        assert_eq!(
            assign_group(&groups, &["10.0.0.0/24".into()], 250).unwrap(),
            "g00"
        );
        assert_eq!(
            assign_group(&groups, &["10.9.0.0/24".into()], 250).unwrap(),
            "g01"
        );
    }

    #[test]
    fn full_groups_are_skipped_and_all_full_is_an_error() {
        let groups = [
            group("g00", 250, &["10.0.0.0/24"], true),
            group("g01", 3, &[], true),
        ];
        assert_eq!(
            assign_group(&groups, &["10.0.0.0/24".into()], 250).unwrap(),
            "g01"
        );
        let full = [group("g00", 2, &[], true)];
        assert_eq!(
            assign_group(&full, &[], 2),
            Err(AssignError::NoCapacity {
                groups: 1,
                limit: 2
            })
        );
        assert_eq!(assign_group(&[], &[], 2), Err(AssignError::NoGroups));
    }

    #[test]
    fn connected_groups_are_preferred_ties_break_by_id() {
        let groups = [
            group("g00", 0, &[], false),
            group("g02", 5, &[], true),
            group("g01", 5, &[], true),
        ];
        assert_eq!(assign_group(&groups, &[], 250).unwrap(), "g01");
        let none_connected = [group("g01", 1, &[], false), group("g00", 1, &[], false)];
        assert_eq!(assign_group(&none_connected, &[], 250).unwrap(), "g00");
    }

    #[test]
    fn subnets_ignore_loopback_and_link_local() {
        let inventory = Inventory {
            nics: vec![
                Nic {
                    name: "lo".into(),
                    mac: String::new(),
                    addresses: vec!["127.0.0.1/8".into(), "::1/128".into()],
                },
                Nic {
                    name: "eth0".into(),
                    mac: String::new(),
                    addresses: vec![
                        "10.1.2.3/24".into(),
                        "fe80::1/64".into(),
                        "169.254.0.9/16".into(),
                    ],
                },
            ],
            ..Default::default()
        };
        assert_eq!(node_subnets(&inventory), vec!["10.1.2.0/24".to_string()]);
    }

    proptest! {
        /// Filling groups one node at a time never passes the limit, and every node
        /// is placed while there is room.
        #[test]
        fn never_over_the_limit(groups in 1usize..6, limit in 1usize..20, nodes in 0usize..150, subnet_count in 1usize..5) {
            let mut loads: Vec<GroupLoad> = (0..groups).map(|i| group(&format!("g{i:02}"), 0, &[], true)).collect();
            for n in 0..nodes {
                let subnet = format!("10.0.{}.0/24", n % subnet_count);
                match assign_group(&loads, std::slice::from_ref(&subnet), limit) {
                    Ok(id) => {
                        let g = loads.iter_mut().find(|g| g.id == id).unwrap();
                        g.members += 1;
                        *g.subnets.entry(subnet).or_insert(0) += 1;
                    }
                    Err(AssignError::NoCapacity { .. }) => {
                        prop_assert!(loads.iter().all(|g| g.members == limit));
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            prop_assert!(loads.iter().all(|g| g.members <= limit));
            prop_assert_eq!(loads.iter().map(|g| g.members).sum::<usize>(), nodes.min(groups * limit));
        }
    }
}

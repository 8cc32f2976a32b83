use super::*;
use glory_keymaster::schema::images::{DeployMode, FileTemplate};

fn facts() -> NodeFacts {
    NodeFacts {
        id: "n-0007".into(),
        hostname: "sim-7".into(),
        group: "g03".into(),
        labels: [("rack".to_string(), "12".to_string())].into(),
        pools: vec!["fs-a".into()],
        mac: Some("52:54:00:00:00:07".into()),
        ip: Some("10.0.3.7".into()),
        cpus: 8,
        memory_mb: 16384,
    }
}

fn profile(name: &str, matches: NodeMatch, config: FirstBootConfig) -> ProfileRecord {
    ProfileRecord {
        v: 1,
        name: name.into(),
        image: None,
        image_version: None,
        mode: DeployMode::Diskless,
        matches,
        config,
        updated_ms: 0,
    }
}

#[test]
fn the_most_specific_profile_wins() {
    let f = facts();
    let all = profile("all", NodeMatch::default(), FirstBootConfig::default());
    let rack = profile(
        "rack12",
        NodeMatch {
            labels: [("rack".to_string(), "12".to_string())].into(),
            ..NodeMatch::default()
        },
        FirstBootConfig::default(),
    );
    let group = profile(
        "g03",
        NodeMatch {
            groups: vec!["g03".into()],
            ..NodeMatch::default()
        },
        FirstBootConfig::default(),
    );
    let other_group = profile(
        "g04",
        NodeMatch {
            groups: vec!["g04".into()],
            ..NodeMatch::default()
        },
        FirstBootConfig::default(),
    );
    let node = profile(
        "this-node",
        NodeMatch {
            nodes: vec!["n-0007".into()],
            ..NodeMatch::default()
        },
        FirstBootConfig::default(),
    );
    let wrong_label = profile(
        "rack13",
        NodeMatch {
            labels: [("rack".to_string(), "13".to_string())].into(),
            ..NodeMatch::default()
        },
        FirstBootConfig::default(),
    );
    let name = |ps: Vec<&ProfileRecord>| select(ps, &f).map(|p| p.name.clone());
    assert_eq!(name(vec![]), None);
    assert_eq!(name(vec![&other_group, &wrong_label]), None);
    assert_eq!(name(vec![&all]), Some("all".into()));
    assert_eq!(name(vec![&all, &rack, &wrong_label]), Some("rack12".into()));
    assert_eq!(name(vec![&rack, &group, &all]), Some("g03".into()));
    assert_eq!(
        name(vec![&rack, &group, &node, &all, &other_group]),
        Some("this-node".into())
    );
    // A tie goes to the first name, whatever the order given.
    let all2 = profile("a-all", NodeMatch::default(), FirstBootConfig::default());
    assert_eq!(name(vec![&all, &all2]), Some("a-all".into()));
    assert_eq!(name(vec![&all2, &all]), Some("a-all".into()));
}

fn config() -> FirstBootConfig {
    FirstBootConfig {
        hostname: Some("{{ node.group }}-{{ node.id }}".into()),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA ops@{{ node.labels.rack }}".into()],
        ntp_servers: vec!["10.0.0.1".into()],
        dns_servers: vec!["10.0.0.2".into()],
        dns_search: vec!["dc1.example".into()],
        interfaces: vec![
            InterfaceConfig {
                name: "bond0".into(),
                bond_members: vec!["eth0".into(), "eth1".into()],
                ..InterfaceConfig::default()
            },
            InterfaceConfig {
                name: "bond0.20".into(),
                address: Some("10.20.{{ node.labels.rack }}.7/24".into()),
                gateway: Some("10.20.{{ node.labels.rack }}.1".into()),
                vlan_id: Some(20),
                vlan_parent: Some("bond0".into()),
                mtu: Some(9000),
                ..InterfaceConfig::default()
            },
        ],
        agent: Some("group_masters = []\n# {{ node.id }}\n".into()),
        files: vec![FileTemplate {
            path: "/etc/motd".into(),
            mode: "0640".into(),
            content: "{{ node.cpus }} cpus, {{ node.memory_mb // 1024 }} GiB, {{ profile }}\n"
                .into(),
        }],
        drift: DriftPolicy::Repair,
    }
}

#[test]
fn configuration_is_rendered_per_node() {
    let p = profile("web", NodeMatch::default(), config());
    check(&p.config).unwrap();
    let c = render(&p, &facts(), None).unwrap().unwrap();
    assert_eq!(c.hostname.as_deref(), Some("g03-n-0007"));
    assert!(c.repair);
    let file = |path: &str| {
        c.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} in {:#?}", c.files))
    };
    assert_eq!(file("/etc/hostname").content, "g03-n-0007\n");
    let keys = file("/root/.ssh/authorized_keys");
    assert_eq!(keys.content, "ssh-ed25519 AAAA ops@12\n");
    assert_eq!(keys.mode, 0o600);
    assert_eq!(
        file("/etc/resolv.conf").content,
        "nameserver 10.0.0.2\nsearch dc1.example\n"
    );
    assert_eq!(
        file("/etc/systemd/timesyncd.conf.d/glory.conf").content,
        "[Time]\nNTP=10.0.0.1\n"
    );
    assert_eq!(file("/etc/motd").content, "8 cpus, 16 GiB, web\n");
    assert_eq!(file("/etc/motd").mode, 0o640);
    assert!(file("/etc/glory/agent.toml").content.contains("# n-0007"));
    // A bond of two NICs, a VLAN on the bond with a static address.
    assert!(file("/etc/systemd/network/10-glory-bond0.netdev")
        .content
        .contains("Kind=bond"));
    let bond = &file("/etc/systemd/network/10-glory-bond0.network").content;
    assert!(bond.contains("VLAN=bond0.20"), "{bond}");
    assert!(!bond.contains("DHCP"), "{bond}");
    assert!(file("/etc/systemd/network/10-glory-eth0.network")
        .content
        .contains("Bond=bond0"));
    let vlan = &file("/etc/systemd/network/10-glory-bond0.20.network").content;
    assert!(vlan.contains("Address=10.20.12.7/24"), "{vlan}");
    assert!(vlan.contains("Gateway=10.20.12.1"), "{vlan}");
    assert!(vlan.contains("MTUBytes=9000"), "{vlan}");
    assert!(file("/etc/systemd/network/10-glory-bond0.20.netdev")
        .content
        .contains("Id=20"));

    // Same input, same hash; another node, another hash.
    let again = render(&p, &facts(), None).unwrap().unwrap();
    assert_eq!(again.hash, c.hash);
    let mut other = facts();
    other.id = "n-0008".into();
    assert_ne!(render(&p, &other, None).unwrap().unwrap().hash, c.hash);
    // Nothing configured: nothing rendered.
    let empty = profile("empty", NodeMatch::default(), FirstBootConfig::default());
    assert_eq!(render(&empty, &facts(), None).unwrap(), None);
}

#[test]
fn bad_templates_are_named_by_where_they_are() {
    let mut c = config();
    c.files[0].content = "{{ node.cpus ".into();
    let e = check(&c).unwrap_err();
    assert_eq!(e.field, "files[0].content");

    // Parses, but names a label the node does not have: strict, not empty.
    let mut c = config();
    c.hostname = Some("{{ node.labels.role }}".into());
    check(&c).unwrap();
    let p = profile("x", NodeMatch::default(), c);
    let e = render(&p, &facts(), None).unwrap_err();
    assert_eq!(e.field, "hostname");
    assert!(e.message.contains("undefined"), "{e}");

    let mut c = config();
    c.files[0].mode = "rw-r--r--".into();
    assert_eq!(check(&c).unwrap_err().field, "files[0].mode");
    let mut c = config();
    c.files[0].path = "/etc/../shadow".into();
    assert_eq!(check(&c).unwrap_err().field, "files[0].path");
    let mut c = config();
    c.files[0].path = "/tmp/{{ node.labels.rack }}/../x".into();
    check(&c).unwrap();
    let p = profile("x", NodeMatch::default(), c);
    assert_eq!(
        render(&p, &facts(), None).unwrap_err().field,
        "files[0].path"
    );
    let mut c = config();
    c.hostname = Some("bad name!".into());
    let p = profile("x", NodeMatch::default(), c);
    assert_eq!(render(&p, &facts(), None).unwrap_err().field, "hostname");
    let mut c = config();
    c.interfaces[1].address = Some("10.20.1.7".into());
    let p = profile("x", NodeMatch::default(), c);
    assert_eq!(
        render(&p, &facts(), None).unwrap_err().field,
        "interfaces[1].address"
    );
}

//! Unit tests of the nftables driver's pure parts (the namespace test is
//! `service-manager/tests/nftables.rs`).

use super::*;
use serde_json::json;

fn backend(name: &str, addr: &str, weight: u32) -> Backend {
    Backend {
        name: name.into(),
        addr: addr.parse().unwrap(),
        weight,
    }
}

fn listen() -> SocketAddr {
    "10.0.0.1:8080".parse().unwrap()
}

fn count(slots: &[SocketAddr], addr: &str) -> usize {
    let addr: SocketAddr = addr.parse().unwrap();
    slots.iter().filter(|s| **s == addr).count()
}

#[test]
fn table_names_are_plain_identifiers() {
    assert_eq!(table_name("web"), "glory_web");
    assert_eq!(table_name("web-2"), "glory_web_2");
    assert_eq!(table_name("a b;c"), "glory_a_b_c");
}

#[test]
fn roundrobin_spreads_weights_and_does_not_depend_on_order() {
    let a = backend("a", "10.0.1.1:80", 2);
    let b = backend("b", "10.0.1.2:80", 1);
    let s = slots(Algorithm::Roundrobin, &[b.clone(), a.clone()]).unwrap();
    assert_eq!(s, vec![a.addr, b.addr, a.addr]);
    // Weights are reduced: 4:2 is 2:1.
    let a4 = Backend {
        weight: 4,
        ..a.clone()
    };
    let b2 = Backend {
        weight: 2,
        ..b.clone()
    };
    assert_eq!(slots(Algorithm::Roundrobin, &[a4, b2]).unwrap(), s);
    // Equal weights: one slot each.
    let one = Backend {
        weight: 1,
        ..a.clone()
    };
    assert_eq!(
        slots(Algorithm::Roundrobin, &[one, b.clone()]).unwrap(),
        vec![a.addr, b.addr]
    );
    // Weight 0: no slot; nobody left: no slot at all.
    let zero = Backend {
        weight: 0,
        ..a.clone()
    };
    assert_eq!(
        slots(Algorithm::Roundrobin, &[zero.clone(), b.clone()]).unwrap(),
        vec![b.addr]
    );
    assert!(slots(Algorithm::Roundrobin, &[zero]).unwrap().is_empty());
    assert!(slots(Algorithm::Source, &[]).unwrap().is_empty());
}

#[test]
fn large_weights_are_capped_and_every_backend_keeps_a_slot() {
    let s = slots(
        Algorithm::Roundrobin,
        &[
            backend("a", "10.0.1.1:80", 256),
            backend("b", "10.0.1.2:80", 255),
            backend("c", "10.0.1.3:80", 1),
        ],
    )
    .unwrap();
    assert!(s.len() <= MAX_ROUNDROBIN_SLOTS as usize + 3, "{}", s.len());
    assert_eq!(count(&s, "10.0.1.3:80"), 1);
    let (a, b) = (count(&s, "10.0.1.1:80"), count(&s, "10.0.1.2:80"));
    assert!(a >= b && a - b <= 2, "{a} {b}");
}

#[test]
fn source_slots_move_only_for_the_backends_that_changed() {
    let all = [
        backend("i-1", "10.0.1.1:80", 1),
        backend("i-2", "10.0.1.2:80", 1),
        backend("i-3", "10.0.1.3:80", 1),
    ];
    let before = slots(Algorithm::Source, &all).unwrap();
    assert_eq!(before.len(), SOURCE_SLOTS as usize);
    for b in &all {
        let n = count(&before, &b.addr.to_string());
        assert!((280..=400).contains(&n), "{} has {n} of 1024 slots", b.name);
    }
    let after = slots(Algorithm::Source, &all[..2]).unwrap();
    assert_eq!(after.len(), SOURCE_SLOTS as usize);
    for (old, new) in before.iter().zip(&after) {
        if *old != all[2].addr {
            assert_eq!(old, new, "a slot of a backend that stayed moved");
        } else {
            assert_ne!(*new, all[2].addr);
        }
    }
    // Weights: 3:1 gives about three quarters.
    let weighted = slots(
        Algorithm::Source,
        &[
            backend("i-1", "10.0.1.1:80", 3),
            backend("i-2", "10.0.1.2:80", 1),
        ],
    )
    .unwrap();
    let heavy = count(&weighted, "10.0.1.1:80");
    assert!((700..=840).contains(&heavy), "{heavy} of 1024");
}

#[test]
fn what_nftables_cannot_do_is_refused_with_what_to_do() {
    let err = slots(Algorithm::Leastconn, &[]).unwrap_err();
    assert_eq!(err, PlanError::Leastconn);
    assert!(err
        .to_string()
        .contains("use algorithm roundrobin or source"));
    let cases = [
        (backend("v6", "[fd00::1]:80", 1), "is not of the family"),
        (
            backend("any", "0.0.0.0:80", 1),
            "needs a specific IP address",
        ),
        (
            backend("p0", "10.0.1.1:0", 1),
            "needs a specific IP address",
        ),
        (backend("w", "10.0.1.1:80", 300), "weights are 0-256"),
    ];
    for (b, says) in cases {
        let err = ruleset("web", listen(), Algorithm::Roundrobin, &[b], true).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    let err = ruleset(
        "web",
        "10.0.0.1:0".parse().unwrap(),
        Algorithm::Source,
        &[],
        true,
    )
    .unwrap_err();
    assert_eq!(err, PlanError::Listen("10.0.0.1:0".parse().unwrap()));
    assert!(NftBalancer::new("web", listen(), Algorithm::Leastconn, Options::default()).is_err());
}

/// The whole transaction, as `nft -j -f -` reads it.
#[test]
fn the_ruleset_replaces_the_table_with_dnat_and_masquerade() {
    let r = ruleset(
        "web",
        listen(),
        Algorithm::Roundrobin,
        &[
            backend("i-2", "10.0.1.2:9002", 1),
            backend("i-1", "10.0.1.1:9001", 1),
        ],
        true,
    )
    .unwrap();
    let table = json!({"family": "ip", "name": "glory_web"});
    let to_service = [
        json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.1"}}),
        json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}),
    ];
    let dnat = json!({"dnat": {"family": "ip", "addr": {"map": {
        "key": {"numgen": {"mode": "inc", "mod": 2}},
        "data": {"set": [[0, {"concat": ["10.0.1.1", 9001]}], [1, {"concat": ["10.0.1.2", 9002]}]]}}}}});
    let rule = |chain: &str| {
        json!({"add": {"rule": {"family": "ip", "table": "glory_web", "chain": chain,
            "expr": [to_service[0], to_service[1], dnat]}}})
    };
    let chain = |name: &str, prio: i32| {
        json!({"add": {"chain": {"family": "ip", "table": "glory_web", "name": name,
            "type": "nat", "hook": name, "prio": prio, "policy": "accept"}}})
    };
    let expected = json!({"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        chain("prerouting", -100),
        chain("output", -100),
        rule("prerouting"),
        rule("output"),
        chain("postrouting", 100),
        {"add": {"rule": {"family": "ip", "table": "glory_web", "chain": "postrouting", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": "10.0.0.1"}},
            {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": 8080}},
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"masquerade": null}]}}},
    ]});
    assert_eq!(serde_json::to_value(&r).unwrap(), expected);
}

#[test]
fn source_hashes_the_client_address_and_no_backend_resets() {
    let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
    let r = ruleset(
        "api",
        v6,
        Algorithm::Source,
        &[backend("i-1", "[fd00:1::5]:8443", 1)],
        false,
    )
    .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let objects = v["nftables"].as_array().unwrap();
    assert_eq!(objects.len(), 7, "no postrouting chain without masquerade");
    assert_eq!(objects[0]["add"]["table"]["family"], "ip6");
    let dnat = &objects[5]["add"]["rule"]["expr"][2]["dnat"];
    assert_eq!(dnat["family"], "ip6");
    assert_eq!(
        dnat["addr"]["map"]["key"],
        json!({"jhash": {"mod": SOURCE_SLOTS, "seed": JHASH_SEED,
            "expr": {"payload": {"protocol": "ip6", "field": "saddr"}}}})
    );
    assert_eq!(
        dnat["addr"]["map"]["data"]["set"][0],
        json!([0, {"concat": ["fd00:1::5", 8443]}])
    );

    let empty = ruleset(
        "web",
        "0.0.0.0:8080".parse().unwrap(),
        Algorithm::Roundrobin,
        &[],
        false,
    )
    .unwrap();
    let v = serde_json::to_value(&empty).unwrap();
    for i in [5, 6] {
        assert_eq!(
            v["nftables"][i]["add"]["rule"]["expr"],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
                {"reject": {"type": "tcp reset"}}
            ]),
            "an unspecified address matches the port alone"
        );
    }
    assert_eq!(
        serde_json::to_value(teardown("web", listen())).unwrap(),
        json!({"nftables": [
            {"add": {"table": {"family": "ip", "name": "glory_web"}}},
            {"delete": {"table": {"family": "ip", "name": "glory_web"}}}]})
    );
}

/// `nft -j list table ip glory_web` as nft 1.0.6 prints it.
const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "glory_web", "handle": 1}},
    {"chain": {"family": "ip", "table": "glory_web", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "glory_web", "chain": "prerouting", "handle": 4, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.9.0.1"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
            "data": {"set": [[1, {"concat": ["10.9.1.3", 9001]}], [0, {"concat": ["10.9.1.2", 9000]}]]}}}}}]}},
    {"rule": {"family": "ip", "table": "glory_web", "chain": "postrouting", "handle": 8, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": "10.9.0.1"}},
        {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": 8080}},
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"masquerade": null}]}}]}"#;

#[test]
fn the_installed_slots_are_read_back_from_nft_listing() {
    let listing: Nftables = serde_json::from_str(LISTING).unwrap();
    assert_eq!(
        installed_slots(&listing),
        vec![
            "10.9.1.2:9000".parse::<SocketAddr>().unwrap(),
            "10.9.1.3:9001".parse().unwrap()
        ]
    );
    // A table that rejects has no slot.
    let rejecting = LISTING.replace(
        r#"{"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
            "data": {"set": [[1, {"concat": ["10.9.1.3", 9001]}], [0, {"concat": ["10.9.1.2", 9000]}]]}}}}}"#,
        r#"{"reject": {"type": "tcp reset"}}"#,
    );
    assert_ne!(rejecting, LISTING);
    let listing: Nftables = serde_json::from_str(&rejecting).unwrap();
    assert!(installed_slots(&listing).is_empty());
}

#[test]
fn nft_runs_in_the_balancers_namespace_through_ip_netns_exec() {
    let nft = Path::new("/usr/sbin/nft");
    let ip = Path::new("/usr/sbin/ip");
    assert_eq!(
        nft_command(nft, Some(ip), Some("lb1"), &["-j", "-f", "-"]),
        (
            ip.to_path_buf(),
            ["netns", "exec", "lb1", "/usr/sbin/nft", "-j", "-f", "-"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        nft_command(nft, None, None, &["-j", "list", "tables"]),
        (
            nft.to_path_buf(),
            ["-j", "list", "tables"].map(String::from).to_vec()
        )
    );
}

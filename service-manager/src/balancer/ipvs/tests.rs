use super::*;

fn backend(name: &str, addr: &str, weight: u32) -> Backend {
    Backend {
        name: name.into(),
        addr: addr.parse().unwrap(),
        weight,
    }
}

fn dest(addr: &str, weight: u32, active_conns: u32) -> Dest {
    Dest {
        addr: addr.parse().unwrap(),
        weight,
        active_conns,
        inactive_conns: 0,
    }
}

fn at(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

/// What the case shows, the destinations there, the backends wanted, the plan.
type PlanCase = (&'static str, Vec<Dest>, Vec<Backend>, Vec<Op>);

#[test]
fn the_plan_adds_reweights_drains_and_removes() {
    let (a, b) = ("10.0.1.5:9001", "10.0.1.6:9002");
    let cases: Vec<PlanCase> = vec![
        (
            "nothing there yet: every backend is added, in the given order",
            vec![],
            vec![backend("i-2", b, 2), backend("i-1", a, 1)],
            vec![
                Op::Add {
                    addr: at(b),
                    weight: 2,
                },
                Op::Add {
                    addr: at(a),
                    weight: 1,
                },
            ],
        ),
        (
            "in agreement: nothing to do",
            vec![dest(a, 1, 7)],
            vec![backend("i-1", a, 1)],
            vec![],
        ),
        (
            "a new weight",
            vec![dest(a, 1, 0)],
            vec![backend("i-1", a, 4)],
            vec![Op::Weight {
                addr: at(a),
                weight: 4,
            }],
        ),
        (
            "a removed instance is drained, then removed",
            vec![dest(a, 1, 0), dest(b, 2, 3)],
            vec![backend("i-1", a, 1)],
            vec![Op::Drain { addr: at(b) }, Op::Remove { addr: at(b) }],
        ),
        (
            "one at weight 0 is draining already: only its removal is left",
            vec![dest(a, 1, 0), dest(b, 0, 3)],
            vec![backend("i-1", a, 1)],
            vec![Op::Remove { addr: at(b) }],
        ),
        (
            "a draining one that is wanted again gets its weight back",
            vec![dest(b, 0, 3)],
            vec![backend("i-2", b, 2)],
            vec![Op::Weight {
                addr: at(b),
                weight: 2,
            }],
        ),
        (
            "a moved instance: its new address is added before the old one drains",
            vec![dest(a, 1, 0)],
            vec![backend("i-1", "10.0.1.5:9100", 1)],
            vec![
                Op::Add {
                    addr: at("10.0.1.5:9100"),
                    weight: 1,
                },
                Op::Drain { addr: at(a) },
                Op::Remove { addr: at(a) },
            ],
        ),
        (
            "two backends on one address: the first counts",
            vec![],
            vec![backend("i-1", a, 1), backend("i-9", a, 7)],
            vec![Op::Add {
                addr: at(a),
                weight: 1,
            }],
        ),
        (
            "all gone: every drain comes before any removal",
            vec![dest(a, 1, 0), dest(b, 2, 0)],
            vec![],
            vec![
                Op::Drain { addr: at(a) },
                Op::Drain { addr: at(b) },
                Op::Remove { addr: at(a) },
                Op::Remove { addr: at(b) },
            ],
        ),
    ];
    for (name, current, wanted, expected) in cases {
        assert_eq!(plan(&current, &wanted), expected, "{name}");
    }
}

#[test]
fn each_op_becomes_its_request_numbered_in_order() {
    let service = Service {
        listen: at("10.0.0.1:8080"),
        algorithm: Algorithm::Roundrobin,
    };
    let a = at("10.0.1.5:9001");
    let ops = [
        Op::Add { addr: a, weight: 3 },
        Op::Weight { addr: a, weight: 5 },
        Op::Drain { addr: a },
        Op::Remove { addr: a },
    ];
    assert_eq!(
        messages(0x24, &service, &ops, 40),
        vec![
            wire::new_dest(0x24, 40, &service, a, 3),
            wire::set_dest(0x24, 41, &service, a, 5),
            wire::set_dest(0x24, 42, &service, a, 0),
            wire::del_dest(0x24, 43, &service, a),
        ]
    );
}

#[test]
fn schedulers_follow_the_algorithm() {
    for (algorithm, scheduler) in [
        (Algorithm::Roundrobin, "wrr"),
        (Algorithm::Leastconn, "wlc"),
        (Algorithm::Source, "sh"),
    ] {
        let service = Service {
            listen: at("10.0.0.1:80"),
            algorithm,
        };
        assert_eq!(service.scheduler(), scheduler);
    }
}

#[test]
fn backends_must_share_the_services_address_family() {
    let service = Service {
        listen: at("10.0.0.1:8080"),
        algorithm: Algorithm::Roundrobin,
    };
    assert!(check_families(&service, &[backend("i-1", "10.0.1.5:9001", 1)]).is_ok());
    let err = check_families(
        &service,
        &[
            backend("i-1", "10.0.1.5:9001", 1),
            backend("i-2", "[2001:db8::5]:9001", 1),
        ],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("[2001:db8::5]:9001"),
        "names the backend: {err}"
    );
}

#[test]
fn refusals_say_what_was_asked_what_the_kernel_said_and_what_to_do() {
    let reply = |errno, message: Option<&str>| wire::ErrorReply {
        errno,
        message: message.map(String::from),
    };
    let e = refused(
        "add virtual service 10.0.0.1:8080",
        wire::IPVS_CMD_NEW_SERVICE,
        &reply(EPERM, None),
        "wrr",
    );
    assert_eq!(e.errno(), Some(EPERM));
    let text = e.to_string();
    assert!(
        text.starts_with("add virtual service 10.0.0.1:8080: "),
        "{text}"
    );
    assert!(text.contains("CAP_NET_ADMIN"), "{text}");

    let text = refused(
        "add virtual service 10.0.0.1:8080",
        wire::IPVS_CMD_NEW_SERVICE,
        &reply(ENOENT, None),
        "wrr",
    )
    .to_string();
    assert!(text.contains("modprobe ip_vs_wrr"), "{text}");

    let text = refused(
        "add 10.0.1.5:9001 (weight 1) to 10.0.0.1:8080",
        wire::IPVS_CMD_NEW_DEST,
        &reply(ESRCH, Some("no such service")),
        "",
    )
    .to_string();
    assert!(text.contains("(no such service)"), "{text}");
    assert!(text.contains("the virtual service is gone"), "{text}");

    // No hint to give: the kernel's words alone.
    let text = refused("x", wire::IPVS_CMD_DEL_DEST, &reply(22, None), "").to_string();
    assert!(text.starts_with("x: the kernel refused it: "), "{text}");
    assert!(!text.contains(';'), "{text}");
}

/// Runs against this machine's kernel, whichever kind it is. Without IPVS,
/// connecting must fail with the error that says so and what to do; with IPVS, a
/// whole sync must go through the kernel and read back as wanted.
#[tokio::test]
async fn the_kernel_either_says_it_has_no_ipvs_or_takes_a_whole_sync() {
    match Ipvs::connect().await {
        Err(e @ IpvsError::NotAvailable) => {
            let text = e.to_string();
            for needed in ["no IPVS", "ip_vs", "modprobe ip_vs", "haproxy", "nftables"] {
                assert!(text.contains(needed), "{needed:?} missing from: {text}");
            }
        }
        Err(e) => panic!("connecting to IPVS failed, but not as a kernel without IPVS: {e}"),
        Ok(mut ipvs) => round_trip(&mut ipvs).await,
    }
}

async fn round_trip(ipvs: &mut Ipvs) {
    assert!(ipvs.family() > wire::GENL_ID_CTRL, "a dynamic family id");
    let service = Service {
        listen: at("127.77.0.1:18080"),
        algorithm: Algorithm::Leastconn,
    };
    let (a, b) = ("127.77.1.1:9001", "127.77.1.2:9002");
    let weights = |dests: Vec<Dest>| {
        let mut v: Vec<(SocketAddr, u32)> = dests.into_iter().map(|d| (d.addr, d.weight)).collect();
        v.sort();
        v
    };
    // A run that failed halfway may have left it.
    ipvs.remove_service(&service).await.unwrap();

    let wanted = [backend("i-1", a, 1), backend("i-2", b, 2)];
    let report = ipvs.sync(&service, &wanted, Duration::ZERO).await.unwrap();
    assert_eq!(
        report,
        SyncReport {
            added: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        weights(ipvs.dests(&service).await.unwrap()),
        [(at(a), 1), (at(b), 2)]
    );
    // Again: nothing to do.
    let report = ipvs.sync(&service, &wanted, Duration::ZERO).await.unwrap();
    assert_eq!(report, SyncReport::default());
    // i-2 goes (idle, so removed at once), i-1 gets a new weight.
    let report = ipvs
        .sync(&service, &[backend("i-1", a, 3)], Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        report,
        SyncReport {
            removed: 1,
            reweighted: 1,
            ..Default::default()
        }
    );
    assert_eq!(weights(ipvs.dests(&service).await.unwrap()), [(at(a), 3)]);

    ipvs.remove_service(&service).await.unwrap();
    assert!(ipvs.dests(&service).await.unwrap().is_empty());
}

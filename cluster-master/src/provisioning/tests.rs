use super::*;

fn progress(state: BootState, detail: &str, at_ms: u64) -> BootProgress {
    BootProgress {
        mac: "52:54:00:00:00:01".into(),
        state,
        ip: None,
        detail: detail.into(),
        at_ms,
    }
}

/// Apply a sequence of (source, state, detail) to an empty boot; the states it went through.
fn run(steps: &[(Source, BootState, &str)]) -> Vec<(String, String)> {
    let mut current: Option<BootRecord> = None;
    let mut seen = Vec::new();
    for (i, (source, state, detail)) in steps.iter().enumerate() {
        if let Some(next) = advance(
            current.as_ref(),
            &progress(*state, detail, i as u64 * 1000),
            *source,
            "p1",
            None,
        ) {
            seen.push((next.state.clone(), next.detail.clone()));
            current = Some(next);
        }
    }
    seen
}

#[test]
fn a_boot_goes_from_discovered_to_enrolled() {
    use BootState::*;
    use Source::*;
    let seen = run(&[
        (Provisioner, Discovered, "dhcp"),
        (Provisioner, Discovered, "dhcp"),
        (Cluster, Booting, "script"),
        (Provisioner, Booting, "kernel"),
        (Provisioner, Enrolling, "agent started"),
        (Cluster, Enrolled, "enrolled as node n-1"),
    ]);
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        ["discovered", "booting", "booting", "enrolling", "enrolled"]
    );
}

#[test]
fn late_reports_never_undo_the_end_and_the_first_failure_stays() {
    use BootState::*;
    use Source::*;
    // The agent enrolled before the call-back arrived: still enrolled.
    let seen = run(&[
        (Cluster, Booting, "script"),
        (Cluster, Enrolled, "enrolled"),
        (Provisioner, Enrolling, "agent started"),
        (Provisioner, Failed, "agent exited with code 1"),
    ]);
    assert_eq!(seen.last().unwrap().0, "enrolled");
    // Refused by the cluster, then the agent exits: the cluster's reason stays.
    let seen = run(&[
        (Cluster, Booting, "script"),
        (Cluster, Failed, "bootstrap token rejected: expired"),
        (Provisioner, Failed, "agent exited with code 1"),
    ]);
    assert_eq!(seen.last().unwrap().1, "bootstrap token rejected: expired");
    // A new boot starts over.
    let seen = run(&[
        (Cluster, Failed, "refused"),
        (Provisioner, Discovered, "dhcp"),
    ]);
    assert_eq!(seen.last().unwrap().0, "discovered");
}

#[test]
fn stuck_boots_fail_after_the_timeout_saying_where() {
    let mk = |mac: &str, state: &str, since_ms: u64| BootRecord {
        v: 1,
        mac: mac.into(),
        state: state.into(),
        node: None,
        ip: None,
        since_ms,
        detail: "d".into(),
        provisioner: "p1".into(),
    };
    let boots = vec![
        mk("a", "booting", 0),
        mk("b", "enrolled", 0),
        mk("c", "enrolling", 250_000),
        mk("d", "discovered", 0),
        mk("e", "failed", 0),
    ];
    let out = timed_out(&boots, Duration::from_secs(300), 300_000);
    let macs: Vec<&str> = out.iter().map(|p| p.mac.as_str()).collect();
    assert_eq!(macs, ["a", "d"]);
    assert!(
        out[0].detail.contains("no call-back within 300 s"),
        "{}",
        out[0].detail
    );
    assert!(out[0].detail.contains("kernel or initramfs not fetched"));
    assert!(out.iter().all(|p| p.state == BootState::Failed));
}

#[test]
fn macs_are_normalized() {
    assert_eq!(
        normalize_mac("52-54-00-AA-bb-0C").as_deref(),
        Some("52:54:00:aa:bb:0c")
    );
    assert_eq!(
        normalize_mac("525400aabb0c").as_deref(),
        Some("52:54:00:aa:bb:0c")
    );
    assert_eq!(normalize_mac("52:54:00:aa:bb"), None);
    assert_eq!(normalize_mac("zz:54:00:aa:bb:0c"), None);
}

#[test]
fn a_report_older_than_the_current_state_is_history() {
    let booting = advance(
        None,
        &progress(BootState::Booting, "script", 1_000),
        Source::Cluster,
        "p1",
        None,
    )
    .unwrap();
    // The DHCP answer that led to the script fetch arrives after it (batched).
    let late = progress(BootState::Discovered, "dhcp ack", 990);
    assert!(advance(Some(&booting), &late, Source::Provisioner, "p1", None).is_none());
    // A new DHCP exchange after it is a new boot.
    let reboot = progress(BootState::Discovered, "dhcp", 5_000);
    let next = advance(Some(&booting), &reboot, Source::Provisioner, "p1", None).unwrap();
    assert_eq!(next.state, "discovered");
}

use super::*;

fn tenant(name: &str) -> EventData {
    EventData::TenantCreated {
        tenant: name.into(),
    }
}

#[tokio::test]
async fn resume_after_an_id_replays_what_followed() {
    let bus = EventBus::default();
    bus.emit(None, tenant("a"));
    let first = bus.recent(10, |_| true)[0].id;
    bus.emit(Some(("p", "t")), EventData::PoolDeleted { nodes: 2 });
    let (past, mut rx) = bus.subscribe(Some(first));
    assert_eq!(past.len(), 1);
    assert_eq!(past[0].kind(), "pool_deleted");
    bus.emit(None, tenant("c"));
    assert_eq!(rx.recv().await.unwrap().kind(), "tenant_created");
    // A transient event reaches live subscribers but is not kept for replay.
    bus.emit_transient(None, tenant("d"));
    assert_eq!(rx.recv().await.unwrap().kind(), "tenant_created");
    let (past, _) = bus.subscribe(Some(first));
    assert_eq!(past.len(), 2, "the transient one is not replayed");
    let line = serde_json::to_value(&*past[0]).unwrap();
    assert_eq!(line["pool"], "p");
    assert_eq!(line["nodes"], 2);
    assert_eq!(line["kind"], "pool_deleted");
}

#[tokio::test]
async fn durable_events_reach_streams_only_once_written_in_order() {
    let bus = EventBus::default();
    bus.make_durable();
    let (_, mut rx) = bus.subscribe(None);
    bus.emit(None, tenant("a"));
    bus.emit_transient(None, tenant("offer"));
    bus.emit(None, tenant("b"));
    assert!(
        rx.try_recv().is_err(),
        "nothing is sent before it is written"
    );
    let first = bus.recent(10, |_| true)[0].id;
    let (past, _) = bus.subscribe(Some(first - 1));
    assert!(past.is_empty(), "no replay of what was not written");
    let waiting = bus.waiting(10);
    assert_eq!(waiting.len(), 3);
    assert_eq!(
        waiting.iter().map(|(_, keep)| *keep).collect::<Vec<_>>(),
        [true, false, true]
    );
    bus.sent(2);
    assert_eq!(rx.recv().await.unwrap().id, first);
    assert_eq!(rx.recv().await.unwrap().id, first + 1);
    assert!(rx.try_recv().is_err());
    let (past, _) = bus.subscribe(Some(first - 1));
    assert_eq!(past.len(), 1, "the written kept one; b waits");
    bus.sent(5);
    assert_eq!(rx.recv().await.unwrap().id, first + 2);
    assert!(bus.waiting(10).is_empty());

    // The next leader restores the ring: replay resumes, new ids continue after it.
    let ring: Vec<Event> = bus
        .recent(10, |_| true)
        .iter()
        .map(|e| (**e).clone())
        .collect();
    let next = EventBus::default();
    next.restore(ring.into_iter().rev().collect());
    let (past, _) = next.subscribe(Some(first));
    assert_eq!(past.iter().map(|e| e.id).collect::<Vec<_>>(), [first + 2]);
    next.emit(None, tenant("c"));
    let newest = next.recent(1, |_| true)[0].id;
    assert!(newest > first + 2, "{newest} after {}", first + 2);
    // As the key master keeps it, a pool event's tenant apart from a tenant event's.
    next.emit(Some(("p", "t")), tenant("c"));
    let newest = next.recent(1, |_| true)[0].clone();
    let line = serde_json::to_vec(&StoredEvent::from(&*newest)).unwrap();
    let back: Event = serde_json::from_slice::<StoredEvent>(&line).unwrap().into();
    assert_eq!((back.id, back.tenant.as_deref()), (newest.id, Some("t")));
    assert_eq!(back.data, tenant("c"));
}

fn alert_event() -> AlertEvent {
    AlertEvent {
        id: "a".into(),
        monitor: "m".into(),
        node: None,
        group: "g".into(),
        level: "critical".into(),
        value: 1.0,
        detail: None,
    }
}

#[test]
fn every_kind_is_the_name_serde_writes() {
    let all = [
        EventData::NodeState {
            node: "n".into(),
            from: NodeState::Up,
            to: NodeState::Down,
        },
        EventData::NodeUp {
            node: "n".into(),
            state: NodeState::Up,
        },
        EventData::NodeDown {
            node: "n".into(),
            state: NodeState::Down,
        },
        EventData::NodeUnreachable {
            node: "n".into(),
            state: NodeState::Unreachable,
        },
        EventData::NodeIdentityConflict {
            node: "n".into(),
            identity: "uuid:1".into(),
            holder: ConflictHolder {
                hostname: "a".into(),
                addresses: "10.0.0.1".into(),
            },
            claimant: ConflictClaimant {
                hostname: "b".into(),
                address: "10.0.0.2:1".into(),
            },
        },
        tenant("t"),
        EventData::TenantDeleted { tenant: "t".into() },
        EventData::PoolCreated {
            component: "c".into(),
            nodes: 1,
        },
        EventData::PoolDeleted { nodes: 1 },
        EventData::NodeAdded {
            node: "n".into(),
            replaces: None,
        },
        EventData::NodeRemoved {
            node: "n".into(),
            reason: "r".into(),
        },
        EventData::CandidatesChanged { candidates: vec![] },
        EventData::MasterElected {
            node: "n".into(),
            address: "a".into(),
            epoch: 1,
            since_ms: 1,
            reason: "r".into(),
        },
        EventData::MasterFailed {
            node: "n".into(),
            epoch: 1,
            reason: "r".into(),
        },
        EventData::MasterFailing {
            node: "n".into(),
            epoch: 1,
            reason: "r".into(),
        },
        EventData::MasterNone { reason: "r".into() },
        EventData::ReplaceBlocked {
            node: "n".into(),
            reason: "r".into(),
        },
        EventData::AlertFiring(alert_event()),
        EventData::AlertResolved(alert_event()),
        EventData::ServiceCreated {
            service: "s".into(),
        },
        EventData::ServiceDeleted {
            service: "s".into(),
        },
        EventData::ServiceChanged {
            service: "s".into(),
            change: "scale".into(),
            desired: 2,
        },
        EventData::ServiceInstance {
            service: "s".into(),
            action: "placed".into(),
            instance: "s-1".into(),
            node: "n".into(),
            reason: "r".into(),
        },
        EventData::ServiceScaled {
            service: "s".into(),
            from: 1,
            to: 2,
            metric: "cpu.percent".into(),
            value: Some(90.0),
            reason: "r".into(),
        },
        EventData::NodeReclaimPending {
            node: "n".into(),
            for_pool: "p".into(),
            for_tenant: "t".into(),
            deadline_ms: 1,
            grace_seconds: 1.0,
        },
        EventData::ReclaimStarted {
            node: "n".into(),
            from_pool: "p".into(),
            deadline_ms: 1,
        },
        EventData::ReclaimCompleted {
            node: "n".into(),
            from_pool: "p".into(),
            to_pool: "q".into(),
            waited_ms: 1,
        },
        EventData::ReclaimCancelled {
            node: "n".into(),
            from_pool: "p".into(),
            to_pool: "q".into(),
            reason: "r".into(),
        },
        EventData::FrameworkRegistered {
            framework: "f".into(),
            name: "n".into(),
        },
        EventData::FrameworkUnregistered {
            framework: "f".into(),
            name: "n".into(),
        },
        EventData::OfferMade {
            framework: "f".into(),
            offer: "o".into(),
            nodes: vec![],
            expires_ms: 1,
        },
        EventData::OfferAccepted {
            framework: "f".into(),
            offer: "o".into(),
            nodes: vec![],
        },
        EventData::OfferDeclined {
            framework: "f".into(),
            offer: "o".into(),
            refuse_seconds: 1.0,
        },
        EventData::OfferRescinded {
            framework: "f".into(),
            offer: "o".into(),
            reason: "r".into(),
        },
    ];
    for data in all {
        let json = serde_json::to_value(&data).unwrap();
        assert_eq!(json["kind"], data.kind(), "{json}");
    }
}

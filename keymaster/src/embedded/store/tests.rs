//! Tests of the store's SQL: query plans and group commit.

mod plan {
    use super::super::*;

    /// The reaper runs ten times a second over a history of up to `history_limit`
    /// events: measuring it must not scan them.
    #[test]
    fn history_bounds_are_read_without_scanning_the_history() {
        let conn = Connection::open_in_memory().unwrap();
        init(&conn).unwrap();
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {HISTORY_BOUNDS}"))
            .unwrap();
        let steps: Vec<String> = plan
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            steps.iter().any(|s| s.starts_with("SEARCH events")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.starts_with("SCAN events")),
            "{steps:?}"
        );
    }
}

mod group {
    use super::super::*;

    fn put(key: &str, lease: LeaseId) -> Txn {
        Txn::alone(TxnOp::Put {
            key: key.into(),
            value: key.as_bytes().to_vec(),
            lease,
        })
    }

    fn response(result: &KmResult<TxnResponse>) -> (bool, Revision, &[OpResult]) {
        match result {
            Ok(r) => (r.succeeded, r.revision, &r.results),
            Err(e) => panic!("write failed: {e}"),
        }
    }

    /// A group commits like its writes one by one: each at its own revision with its
    /// own published events, and one that fails changes nothing of its own and nothing
    /// of the others.
    #[test]
    fn a_group_commits_each_write_as_if_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        init(&conn).unwrap();
        let (publish, mut published) = broadcast::channel(16);
        let writes = vec![
            put("a", 0),
            Txn {
                compares: vec![],
                success: vec![TxnOp::put("half", "x"), TxnOp::put("b", "b")],
                failure: vec![],
            },
            // A put on a lease that was never granted fails: nothing of it may remain,
            // and the next write must not see its key.
            put("dead-lease", 12345),
            Txn {
                compares: vec![Compare::absent("dead-lease")],
                success: vec![TxnOp::put("c", "c")],
                failure: vec![],
            },
            Txn::alone(TxnOp::delete("a")),
            Txn::alone(TxnOp::delete("never-there")),
        ];
        let results = write_group(&mut conn, &writes, 0, &publish);
        assert_eq!(response(&results[0]).1, 2);
        assert!(response(&results[1]).0);
        assert_eq!(response(&results[1]).1, 3);
        assert_eq!(results[2], Err(KeyMasterError::LeaseNotFound(12345)));
        assert!(response(&results[3]).0, "dead-lease is absent");
        assert_eq!(response(&results[3]).1, 4);
        assert_eq!(response(&results[4]), (true, 5, &[OpResult::Delete(1)][..]));
        // Nothing deleted: the revision does not move.
        assert_eq!(response(&results[5]), (true, 5, &[OpResult::Delete(0)][..]));

        assert_eq!(revision(&conn).unwrap(), 5);
        assert!(get(&conn, "dead-lease").unwrap().is_none());
        assert!(get(&conn, "a").unwrap().is_none());
        assert_eq!(get(&conn, "c").unwrap().unwrap().mod_revision, 4);
        assert_eq!(get(&conn, "half").unwrap().unwrap().mod_revision, 3);
        // One published batch per revision that wrote something, in order.
        let mut revisions = Vec::new();
        while let Ok(batch) = published.try_recv() {
            let revs: Vec<Revision> = batch.iter().map(|e| e.event.kv.mod_revision).collect();
            assert!(revs.windows(2).all(|w| w[0] == w[1]), "{revs:?}");
            revisions.push(revs[0]);
        }
        assert_eq!(revisions, vec![2, 3, 4, 5]);
        // The history holds the same events, at the same revisions.
        let history: Vec<i64> = query_vec(
            &conn,
            "SELECT revision FROM events ORDER BY id",
            [],
            |row| row.get(0),
            "read history",
        )
        .unwrap();
        assert_eq!(history, vec![2, 3, 3, 4, 5]);
    }
}

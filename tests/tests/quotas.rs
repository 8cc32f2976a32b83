//! Tenant quotas (issue 21, first part): a pool that would take a tenant past a limit
//! is refused with 409 `quota_exceeded` and the numbers, nothing allocated; the
//! guarantees must fit the cluster; only operators see and set quotas; bad input is a
//! 400 naming the field.

use std::time::Duration;

use glory::client::ApiClient;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

async fn call(api: &ApiClient, method: Method, path: &str, body: Value) -> (u16, Value) {
    api.request(method, path, Some(body)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_bound_what_a_tenant_can_take() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(1).agents(10).start().await?;
    cluster.wait_all_up(10, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    for t in ["a", "b"] {
        op.call(Method::POST, "/api/v1/tenants", Some(json!({"name": t})))
            .await?;
    }
    // No quota yet: no limit, nothing used.
    let q = op.get("/api/v1/tenants/a/quota").await?;
    assert_eq!(q["max_nodes"], Value::Null, "{q}");
    assert_eq!(q["used"]["nodes"], 0, "{q}");
    let (status, q) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/a/quota",
        json!({"guaranteed_nodes": 4, "max_nodes": 5}),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(
        (q["guaranteed_nodes"].as_u64(), q["max_nodes"].as_u64()),
        (Some(4), Some(5))
    );

    // Past max_nodes: 409 with the limit, the use and the request; nothing created.
    let pool = |name: &str, size: u64| json!({"name": name, "tenant": "a", "component": "fs", "size": size});
    let (status, e) = call(op, Method::POST, "/api/v1/pools", pool("big", 6)).await;
    assert_eq!(status, 409, "{e}");
    let err = &e["error"];
    assert_eq!(err["code"], "quota_exceeded", "{e}");
    assert_eq!(
        (
            err["quota"].as_str(),
            err["limit"].as_u64(),
            err["used"].as_u64(),
            err["requested"].as_u64()
        ),
        (Some("max_nodes"), Some(5), Some(0), Some(6)),
        "{e}"
    );
    let (status, _) = call(op, Method::GET, "/api/v1/pools/big", Value::Null).await;
    assert_eq!(status, 404, "nothing half-created");
    // Within: 3, then growing by 3 is refused (3 used, 3 more asked), by 2 is fine.
    let (status, p) = call(op, Method::POST, "/api/v1/pools", pool("fs-a", 3)).await;
    assert_eq!(status, 201, "{p}");
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools/fs-a/nodes",
        json!({"count": 3}),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(
        (
            e["error"]["used"].as_u64(),
            e["error"]["requested"].as_u64()
        ),
        (Some(3), Some(3)),
        "{e}"
    );
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools/fs-a/nodes",
        json!({"count": 2}),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let q = op.get("/api/v1/tenants/a/quota").await?;
    assert_eq!(q["used"]["nodes"], 5, "{q}");
    assert!(q["used"]["cpus"].as_u64() > Some(0), "{q}");

    // CPUs: a limit below what one more node brings refuses it, naming max_cpus.
    let used_cpus = q["used"]["cpus"].as_u64().unwrap();
    let (status, q) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/a/quota",
        json!({"guaranteed_nodes": 4, "max_nodes": 9, "max_cpus": used_cpus + 1}),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools/fs-a/nodes",
        json!({"count": 1}),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["quota"], "max_cpus", "{e}");

    // Guarantees: 4 for a, so b may be guaranteed 6 of 10 but not 7.
    let (status, e) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/b/quota",
        json!({"guaranteed_nodes": 7}),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("1 short"),
        "{e}"
    );
    let (status, e) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/b/quota",
        json!({"guaranteed_nodes": 6}),
    )
    .await;
    assert_eq!(status, 200, "{e}");

    // An elastic pool: min now, grows up to max, never released below min.
    let (status, el) = call(
        op,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "el", "tenant": "b", "component": "dp", "size": {"min": 1, "max": 3}}),
    )
    .await;
    assert_eq!(status, 201, "{el}");
    assert_eq!(
        (el["size"].as_u64(), el["elastic"]["max"].as_u64()),
        (Some(1), Some(3)),
        "{el}"
    );
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools/el/nodes",
        json!({"count": 2}),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools/el/nodes",
        json!({"count": 1}),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("size.max"),
        "{e}"
    );
    let members: Vec<String> = op.get("/api/v1/pools/el").await?["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    for node in &members[..2] {
        let (status, e) = call(
            op,
            Method::DELETE,
            &format!("/api/v1/pools/el/nodes/{node}"),
            Value::Null,
        )
        .await;
        assert!(status < 300, "{e}");
    }
    let (status, e) = call(
        op,
        Method::DELETE,
        &format!("/api/v1/pools/el/nodes/{}", members[2]),
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("size.min"),
        "{e}"
    );
    let (status, e) = call(
        op,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "bad", "tenant": "b", "component": "dp", "size": {"min": 3, "max": 2}}),
    )
    .await;
    assert_eq!(status, 422, "min above max: {e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("size.min"),
        "{e}"
    );
    call(op, Method::DELETE, "/api/v1/pools/el", Value::Null).await;

    // The sharing view: a holds 5 nodes with a guarantee of 4 (1 borrowed), b none.
    let sharing = op.get("/api/v1/sharing").await?;
    assert_eq!(sharing["capacity"]["nodes"], 10, "{sharing}");
    let row = |t: &str| {
        sharing["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tenant"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}: {sharing}"))
    };
    assert_eq!(
        (
            row("a")["used"]["nodes"].as_u64(),
            row("a")["borrowed_nodes"].as_u64()
        ),
        (Some(5), Some(1)),
        "{sharing}"
    );
    assert!(row("a")["dominant_share"].as_f64() > Some(0.0), "{sharing}");
    assert_eq!(
        row("b")["drf_rank"],
        1,
        "b holds nothing: served first: {sharing}"
    );
    assert_eq!(row("a")["drf_rank"], 2, "{sharing}");

    // Bad input names the field; unknown tenants are 404; only operators.
    for (body, field) in [
        (json!({"max_nodes": -1}), "max_nodes"),
        (
            json!({"guaranteed_nodes": 3, "max_nodes": 2}),
            "guaranteed_nodes",
        ),
        (json!({"max_pods": 2}), "max_pods"),
    ] {
        let rule = field == "guaranteed_nodes";
        let (status, e) = call(op, Method::PUT, "/api/v1/tenants/a/quota", body).await;
        assert_eq!(status, if rule { 422 } else { 400 }, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {e}"
        );
    }
    let (status, _) = call(op, Method::GET, "/api/v1/tenants/nope/quota", Value::Null).await;
    assert_eq!(status, 404);
    let t = op
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "tenant", "tenant": "a"})),
        )
        .await?;
    let tenant = op.with_token(t["token"].as_str().unwrap());
    let (status, _) = call(&tenant, Method::GET, "/api/v1/tenants/a/quota", Value::Null).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &tenant,
        Method::PUT,
        "/api/v1/tenants/a/quota",
        json!({"max_nodes": 100}),
    )
    .await;
    assert_eq!(status, 403);
    let own = tenant.get("/api/v1/sharing").await?;
    assert_eq!(own["total"], 1, "a tenant sees its own row: {own}");
    assert_eq!(own["items"][0]["tenant"], "a");
    cluster.shutdown().await;
    Ok(())
}

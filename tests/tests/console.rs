//! The console's server side over HTTP, in-process: its files are served, signing in
//! with a token or a user's password gives an HttpOnly session cookie and a CSRF token,
//! changes without the token are refused, a tenant's session sees only its pools, the
//! node filter grammar narrows lists, and bulk actions report per node.

use std::time::Duration;

use glory_tests::TestCluster;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Browser {
    fn new(base: &str) -> Self {
        Browser {
            http: reqwest::Client::new(),
            base: base.to_string(),
            cookie: None,
            csrf: None,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> anyhow::Result<(StatusCode, Value, reqwest::header::HeaderMap)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, format!("glory_session={c}"));
        }
        if let (true, Some(t)) = (csrf, &self.csrf) {
            req = req.header("x-csrf-token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        ))
    }

    async fn sign_in(&mut self, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let (status, v, headers) = self
            .send(Method::POST, "/api/v1/session", Some(body), false)
            .await?;
        if status.is_success() {
            let set = headers
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            let value = set
                .split(';')
                .next()
                .and_then(|kv| kv.strip_prefix("glory_session="))
                .unwrap_or_default();
            self.cookie = Some(value.to_string());
            self.csrf = v["csrf_token"].as_str().map(str::to_string);
        }
        Ok((status, v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_users_filters_and_bulk_actions() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(2).agents(6).start().await?;
    cluster.wait_all_up(6, Duration::from_secs(20)).await?;
    let api = &cluster.api;
    let base = api.base().to_string();

    // The console's files, with no token.
    let page = reqwest::get(format!("{base}/")).await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    assert!(html.contains("name=\"token\""), "{html}");
    for file in [
        "/console/app.js",
        "/console/app.css",
        "/console/vendor/uPlot.iife.min.js",
    ] {
        assert_eq!(
            reqwest::get(format!("{base}{file}")).await?.status(),
            200,
            "{file}"
        );
    }

    // Signing in: a bad token is 401, the operator token a session.
    let mut op = Browser::new(&base);
    let (status, _) = op.sign_in(json!({"token": "ga-nope.nope"})).await?;
    assert_eq!(status, 401);
    let (status, me) = op
        .sign_in(json!({"token": cluster.operator_token().trim()}))
        .await?;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["role"], "operator");
    let (status, whoami, _) = op.send(Method::GET, "/api/v1/session", None, false).await?;
    assert_eq!(
        (status, &whoami["role"]),
        (StatusCode::OK, &json!("operator"))
    );
    let (status, nodes, _) = op.send(Method::GET, "/api/v1/nodes", None, false).await?;
    assert_eq!((status, &nodes["total"]), (StatusCode::OK, &json!(6)));

    // A change with the cookie but without the CSRF token is refused, with it done.
    let node = cluster.node_id(0)?;
    let path = format!("/api/v1/nodes/{node}/labels");
    let (status, refused, _) = op
        .send(Method::PUT, &path, Some(json!({"rack": "r1"})), false)
        .await?;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "csrf");
    let (status, _, _) = op
        .send(Method::PUT, &path, Some(json!({"rack": "r1"})), true)
        .await?;
    assert_eq!(status, 200);

    // Groups carry their load (the console's Groups page).
    let groups = api.get("/api/v1/groups").await?;
    let load = &groups["items"][0]["load"];
    assert!(load["nodes_reporting"].as_u64().is_some(), "{groups}");

    // The filter grammar.
    let (_, g0, _) = op
        .send(
            Method::GET,
            "/api/v1/nodes?filter=group:g00%20state:up",
            None,
            false,
        )
        .await?;
    let in_g0 = g0["total"].as_u64().unwrap_or(0);
    assert!((1..=6).contains(&in_g0), "{g0}");
    let (status, bad, _) = op
        .send(Method::GET, "/api/v1/nodes?filter=rack:r1", None, false)
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("filter:"));
    let (_, sorted, _) = op
        .send(
            Method::GET,
            "/api/v1/nodes?sort=hostname&offset=2&limit=2",
            None,
            false,
        )
        .await?;
    assert_eq!(
        (
            sorted["total"].as_u64(),
            sorted["items"].as_array().map(Vec::len)
        ),
        (Some(6), Some(2))
    );

    // Bulk: a dry run says how many, the action answers per node.
    let bulk = json!({"filter": "group:g00", "action": "label", "labels": {"row": "7"}});
    let mut dry = bulk.clone();
    dry["dry_run"] = json!(true);
    let (_, preview, _) = op
        .send(Method::POST, "/api/v1/nodes/bulk", Some(dry), true)
        .await?;
    assert_eq!(preview["matched"], in_g0);
    let (status, done, _) = op
        .send(Method::POST, "/api/v1/nodes/bulk", Some(bulk), true)
        .await?;
    assert_eq!(status, 200, "{done}");
    let results = done["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len() as u64, in_g0);
    assert!(results.iter().all(|r| r["ok"] == true), "{done}");
    let labelled = api.get("/api/v1/nodes?filter=label:row=7").await?;
    assert_eq!(labelled["total"], in_g0);
    let (status, _, _) = op
        .send(
            Method::POST,
            "/api/v1/nodes/bulk",
            Some(json!({"action": "paint", "filter": ""})),
            true,
        )
        .await?;
    assert_eq!(status, 400);

    // Users: Argon2id passwords, a clear error for a short one, sign-in by password.
    let err = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "ann", "password": "short", "role": "operator"})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400") && err.contains("password"), "{err}");
    api.call(
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "ann", "password": "correct horse battery", "role": "operator"})),
    )
    .await?;
    let users = api.get("/api/v1/users").await?;
    assert_eq!(users["items"][0]["name"], "ann");
    assert!(users["items"][0].get("password_hash").is_none(), "{users}");
    let mut ann = Browser::new(&base);
    let (status, _) = ann
        .sign_in(json!({"user": "ann", "password": "wrong horse battery"}))
        .await?;
    assert_eq!(status, 401);
    let (status, me) = ann
        .sign_in(json!({"user": "ann", "password": "correct horse battery"}))
        .await?;
    assert_eq!((status, &me["user"]), (StatusCode::OK, &json!("ann")));

    // A tenant's session sees its own pools only, and no operator route.
    for t in ["alpha", "beta"] {
        api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": t})))
            .await?;
    }
    let beta = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "tenant", "tenant": "beta"})),
        )
        .await?;
    let beta_api = glory::client::ApiClient::new(&base, beta["token"].as_str().unwrap_or(""))?;
    beta_api
        .call(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "db-b", "component": "db", "size": 1})),
        )
        .await?;
    let alpha = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "tenant", "tenant": "alpha"})),
        )
        .await?;
    let mut tenant = Browser::new(&base);
    let (status, me) = tenant
        .sign_in(json!({"token": alpha["token"].as_str().unwrap_or("")}))
        .await?;
    assert_eq!((status, &me["tenant"]), (StatusCode::OK, &json!("alpha")));
    let (_, pools, _) = tenant
        .send(Method::GET, "/api/v1/pools", None, false)
        .await?;
    assert_eq!(pools["total"], 0, "{pools}");
    let (_, pools, _) = op.send(Method::GET, "/api/v1/pools", None, false).await?;
    assert_eq!(pools["total"], 1, "{pools}");
    let (status, _, _) = tenant
        .send(Method::GET, "/api/v1/nodes", None, false)
        .await?;
    assert_eq!(status, 403);

    // Sign-out needs the CSRF token too; afterwards the cookie is worth nothing.
    let (status, _, _) = op
        .send(Method::DELETE, "/api/v1/session", None, false)
        .await?;
    assert_eq!(status, 403);
    let (status, _, _) = op
        .send(Method::DELETE, "/api/v1/session", None, true)
        .await?;
    assert_eq!(status, 204);
    let (status, _, _) = op.send(Method::GET, "/api/v1/nodes", None, false).await?;
    assert_eq!(status, 401);
    cluster.shutdown().await;
    Ok(())
}

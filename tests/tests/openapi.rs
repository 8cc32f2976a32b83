//! The live API against its own OpenAPI description: `schemathesis` (installed by
//! ./test.sh into a virtualenv) runs every check (no 5xx; status, content type, headers
//! and body as described; requests the description allows are accepted and those it
//! rules out refused; deleted objects gone; authentication enforced...) in every phase:
//! the examples, the coverage of each schema's boundaries, fuzzing, and stateful
//! sequences that follow the description's links from an object's creation to the
//! operations on it. A request that matches the description but breaks a rule it
//! cannot state (one field against another, the caller's role, the clock, an object
//! that does not exist) is a 422, which the acceptance check is told to expect.

use std::path::PathBuf;
use std::time::Duration;

use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::json;

fn schemathesis() -> PathBuf {
    match std::env::var_os("GLORY_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/st")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_api_matches_its_openapi_spec() -> anyhow::Result<()> {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: ./test.sh installs schemathesis (or set GLORY_SCHEMATHESIS)",
        st.display()
    );
    let cluster = TestCluster::builder().groups(2).agents(8).start().await?;
    cluster.wait_all_up(8, Duration::from_secs(30)).await?;
    let api = &cluster.api;
    // Objects to find, so generated requests reach more than 404s.
    api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": "t"})))
        .await?;
    let pool = api
        .call(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "p", "tenant": "t", "component": "fs", "size": 3})),
        )
        .await?;
    let first = pool["nodes"][0]["id"].as_str().unwrap().to_string();
    api.call(
        Method::POST,
        "/api/v1/pools/p/candidates",
        Some(json!({"nodes": [first]})),
    )
    .await?;
    let base = api.base().to_string();
    let token = cluster.operator_token();
    let work = tempfile::tempdir()?;
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[generation]\n\
         max-examples = 10\n\
         \n\
         # Sequences that follow the links from each creation: longer and more of them\n\
         # than the default, so that they reach past the first operation.\n\
         [phases.stateful]\n\
         max-steps = 12\n\
         [phases.stateful.generation]\n\
         max-examples = 60\n\
         \n\
         [checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"429\", \"5xx\"]\n\
         \n\
         # The event streams never end on their own: each is read for 2 s.\n\
         [[operations]]\n\
         include-path-regex = \"/(events|offers)$\"\n\
         request-timeout = 2\n",
    )?;
    let out = tokio::process::Command::new(&st)
        .current_dir(work.path())
        .env(
            "HYPOTHESIS_STORAGE_DIRECTORY",
            work.path().join("hypothesis"),
        )
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("{base}/api/v1/openapi.json"),
            "--url",
            &format!("{base}/api/v1"),
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            "--checks",
            "all",
            // Power actions and states go to whatever BMC address a generated request
            // stored (traffic off this machine), so they are tested against real
            // emulators in power.rs instead.
            "--exclude-path-regex",
            "/power$",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--seed",
            "7",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--no-color",
        ])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}); see the output above",
        out.status.code()
    );
    // The cluster still serves after the fuzzing (which may have deleted the pool and
    // removed nodes: it runs with the operator token).
    let summary = api.get("/api/v1/cluster").await?;
    assert!(summary["nodes"].as_u64().is_some(), "{summary}");
    cluster.shutdown().await;
    Ok(())
}

//! The console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver) against a 1,000-node `glory up`. Sign in; the heat map has a cell per
//! node; a node killed through the simulation API turns down within seconds; a filter
//! narrows the node list; a bulk label on a filter applies to every match; a tenant's
//! session does not see another tenant's pool; a change without the CSRF token is
//! refused. Screenshots of each page are saved under `target/console-screenshots/`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use glory::client::ApiClient;
use glory::up::{Up, UpOptions};
use glory_tests::procs::free_tcp;
use glory_tests::wait::until_some;
use reqwest::Method;
use serde_json::{json, Value};

const NODES: u64 = 1000;

/// chromedriver on a free port, killed with this value.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(path: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(path).exists(),
        "{path} is missing: ./test.sh installs Debian's chromium and chromium-driver"
    );
    Ok(())
}

async fn browser() -> anyhow::Result<(Driver, Client)> {
    tool("/usr/bin/chromium")?;
    tool("/usr/bin/chromedriver")?;
    let port = free_tcp().port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let profile = tempfile::tempdir()?;
    let driver = Driver {
        child,
        port,
        _profile: profile,
    };
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1400,1000",
                     format!("--user-data-dir={}", driver._profile.path().display())],
        }
    }))?;
    let url = format!("http://127.0.0.1:{}", driver.port);
    let started = Instant::now();
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("chromedriver: {e}")),
        }
    };
    Ok((driver, client))
}

/// Evaluate `script` (a function body that returns a value) in the page.
async fn js(c: &Client, script: &str) -> anyhow::Result<Value> {
    Ok(c.execute(script, vec![]).await?)
}

async fn wait_js(c: &Client, what: &str, timeout: Duration, script: &str) -> anyhow::Result<Value> {
    let (v, took) = until_some(what, timeout, || async {
        js(c, script)
            .await
            .ok()
            .filter(|v| !v.is_null() && *v != json!(false))
    })
    .await?;
    eprintln!("{what}: after {took:?}");
    Ok(v)
}

async fn screenshot(c: &Client, name: &str) -> anyhow::Result<()> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), c.screenshot().await?)?;
    Ok(())
}

async fn sign_in(c: &Client, base: &str, token: &str) -> anyhow::Result<()> {
    c.goto(&format!("{base}/")).await?;
    let input = c
        .wait()
        .for_element(Locator::Css("input[name=token]"))
        .await?;
    input.send_keys(token).await?;
    c.find(Locator::Css("#signin-form button[type=submit]"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// A `glory up` of `nodes` nodes in `groups` groups, every node up, and a browser signed
/// in as the operator with the overview complete. The temporary directory and the driver
/// must outlive the test.
struct Console {
    _dir: tempfile::TempDir,
    up: Up,
    api: ApiClient,
    base: String,
    _driver: Driver,
    c: Client,
}

async fn console(nodes: u64, groups: usize, up_within: Duration) -> anyhow::Result<Console> {
    glory_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let up = Up::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: nodes as usize,
        groups,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", up.api_addr);
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    until_some(&format!("{nodes} nodes up"), up_within, || async {
        let c = api.get("/api/v1/cluster").await.ok()?;
        (c["nodes_by_state"]["up"].as_u64() == Some(nodes)).then_some(())
    })
    .await?;
    let (driver, c) = browser().await?;
    sign_in(&c, &base, up.operator_token.trim()).await?;
    wait_js(
        &c,
        "overview ready",
        Duration::from_secs(60),
        "return document.body.dataset.overview === 'ready'",
    )
    .await?;
    Ok(Console {
        _dir: dir,
        up,
        api,
        base,
        _driver: driver,
        c,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_against_a_thousand_nodes() -> anyhow::Result<()> {
    // Signed in with the operator token: the overview has a cell per node.
    let Console {
        _dir,
        up,
        api,
        base,
        _driver,
        c,
    } = console(NODES, 4, Duration::from_secs(180)).await?;
    let groups = js(
        &c,
        "return document.querySelectorAll('#overview-groups li').length",
    )
    .await?;
    assert_eq!(groups, json!(4), "the groups with their masters");
    let cells = js(
        &c,
        "return document.querySelectorAll('#node-cells li[data-node-id][data-state]').length",
    )
    .await?;
    assert_eq!(cells, json!(NODES));
    screenshot(&c, "overview").await?;

    // A node killed through the simulation API turns down, live.
    let victim = api.get("/api/v1/nodes?limit=1&filter=group:g01").await?["items"][0]["id"]
        .as_str()
        .context("a node of g01")?
        .to_string();
    api.call(
        Method::POST,
        &format!("/api/v1/sim/nodes/{victim}/kill"),
        None,
    )
    .await?;
    wait_js(&c, "the killed node shown down", Duration::from_secs(15),
        &format!("return document.querySelector('li[data-node-id=\"{victim}\"]').dataset.state === 'down'")).await?;
    screenshot(&c, "overview-node-down").await?;

    // A filter narrows the list, server side.
    let in_g02 = api.get("/api/v1/nodes?limit=1&filter=group:g02").await?["total"].clone();
    c.goto(&format!("{base}/#/nodes")).await?;
    let filter = c.wait().for_element(Locator::Css("#filter")).await?;
    filter.send_keys("group:g02").await?;
    c.find(Locator::Css("#filter-form button"))
        .await?
        .click()
        .await?;
    wait_js(
        &c,
        "the filtered list",
        Duration::from_secs(10),
        &format!(
            "return document.querySelector('#nodes-total').textContent === '{in_g02} nodes match'"
        ),
    )
    .await?;
    let rows = js(&c, "return [...document.querySelectorAll('#nodes-table tbody tr')].every(r => r.children[3].textContent === 'g02')").await?;
    assert_eq!(rows, json!(true));
    screenshot(&c, "nodes-filtered").await?;

    // A bulk label on the whole filter, confirmed: every match gets it.
    c.find(Locator::Css("#bulk-label"))
        .await?
        .send_keys("rack=r12")
        .await?;
    c.find(Locator::Css("#bulk-all")).await?.click().await?;
    let (text, _) = until_some("the confirmation", Duration::from_secs(10), || async {
        c.get_alert_text().await.ok()
    })
    .await?;
    assert!(text.contains(&format!("{in_g02} servers")), "{text}");
    c.accept_alert().await?;
    wait_js(
        &c,
        "the bulk label done",
        Duration::from_secs(60),
        "const d = document.querySelector('[data-bulk=done]'); return d && d.textContent",
    )
    .await?;
    let labelled = api
        .get("/api/v1/nodes?limit=1&filter=label:rack=r12")
        .await?;
    assert_eq!(labelled["total"], in_g02, "every match labelled");
    screenshot(&c, "nodes-bulk-labelled").await?;

    // A change without the CSRF token is refused (the page's own fetch, no header).
    let status = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/nodes/bulk', {method: 'POST', credentials: 'same-origin',
               headers: {'content-type': 'application/json'},
               body: JSON.stringify({filter: 'group:g02', action: 'label', labels: {x: 'y'}})})
             .then(r => done(r.status));",
            vec![],
        )
        .await?;
    assert_eq!(status, json!(403));

    // The heat map coloured by CPU (from the heartbeats) draws without an error.
    c.goto(&format!("{base}/#/overview")).await?;
    wait_js(
        &c,
        "overview again",
        Duration::from_secs(10),
        "return document.body.dataset.overview === 'ready'",
    )
    .await?;
    js(&c, "const s = document.querySelector('#colour-by'); s.value = 'cpu'; s.dispatchEvent(new Event('change')); return true").await?;
    wait_js(
        &c,
        "the metric legend",
        Duration::from_secs(10),
        "return document.querySelector('#legend').textContent.includes('brightest')",
    )
    .await?;
    screenshot(&c, "overview-by-cpu").await?;

    // Tenants, and a pool created from the Pools page for beta.
    for t in ["alpha", "beta"] {
        api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": t})))
            .await?;
    }
    c.goto(&format!("{base}/#/pools")).await?;
    let form = c.wait().for_element(Locator::Css("#pool-form")).await?;
    form.find(Locator::Css("input[name=name]"))
        .await?
        .send_keys("db-b")
        .await?;
    form.find(Locator::Css("input[name=tenant]"))
        .await?
        .send_keys("beta")
        .await?;
    form.find(Locator::Css("button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_js(
        &c,
        "the new pool listed",
        Duration::from_secs(10),
        "return document.querySelector('#pools-table tr[data-pool=\"db-b\"]') !== null",
    )
    .await?;
    assert_eq!(api.get("/api/v1/pools/db-b").await?["tenant"], "beta");

    // A silence from the Alerts page.
    c.goto(&format!("{base}/#/alerts")).await?;
    let form = c.wait().for_element(Locator::Css("#silence-form")).await?;
    form.find(Locator::Css("input[name=node]"))
        .await?
        .send_keys(&victim)
        .await?;
    form.find(Locator::Css("input[name=comment]"))
        .await?
        .send_keys("maintenance")
        .await?;
    form.find(Locator::Css("button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_js(
        &c,
        "the silence listed",
        Duration::from_secs(10),
        "return document.querySelectorAll('#silences-table tbody tr').length === 1",
    )
    .await?;
    assert_eq!(api.get("/api/v1/silences").await?["total"], 1);

    // A monitor from the same page.
    let form = c.find(Locator::Css("#monitor-form")).await?;
    form.find(Locator::Css("input[name=name]"))
        .await?
        .send_keys("cpu-hot")
        .await?;
    form.find(Locator::Css("button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_js(&c, "the monitor listed", Duration::from_secs(10),
        "return [...document.querySelectorAll('#monitors-table tbody td')].some(td => td.textContent === 'cpu-hot')").await?;
    assert_eq!(
        api.get("/api/v1/monitors/cpu-hot").await?["rules"][0]["threshold"],
        90.0
    );

    // A pool node's page names its pool.
    let member = api.get("/api/v1/pools/db-b").await?["nodes"][0]["id"]
        .as_str()
        .context("a node of db-b")?
        .to_string();
    c.goto(&format!("{base}/#/node/{member}")).await?;
    wait_js(
        &c,
        "the node's pool",
        Duration::from_secs(10),
        "return document.querySelector('#node-pools').textContent.includes('db-b')",
    )
    .await?;
    wait_js(
        &c,
        "the node's four charts",
        Duration::from_secs(10),
        "return document.querySelectorAll('#page-node .uplot').length === 4",
    )
    .await?;

    // The other pages render.
    for page in ["groups", "alerts", "pools"] {
        c.goto(&format!("{base}/#/{page}")).await?;
        wait_js(&c, &format!("the {page} page"), Duration::from_secs(10),
            &format!("return !document.querySelector('#page-{page}').hidden && document.querySelectorAll('#page-{page} tbody tr').length >= 0")).await?;
        screenshot(&c, page).await?;
    }
    c.goto(&format!("{base}/#/node/{victim}")).await?;
    wait_js(
        &c,
        "the node page",
        Duration::from_secs(10),
        &format!("return document.querySelector('#node-title').textContent.includes('{victim}')"),
    )
    .await?;
    screenshot(&c, "node").await?;

    // Tenants: beta's pool is not shown to alpha's session.
    let alpha = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "tenant", "tenant": "alpha"})),
        )
        .await?;
    c.find(Locator::Css("#signout")).await?.click().await?;
    c.wait()
        .for_element(Locator::Css("#signin:not([hidden])"))
        .await?;
    sign_in(&c, &base, alpha["token"].as_str().unwrap_or("")).await?;
    wait_js(
        &c,
        "alpha's pools page",
        Duration::from_secs(10),
        "return location.hash === '#/pools' && !document.querySelector('#page-pools').hidden",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = js(
        &c,
        "return document.querySelectorAll('#pools-table tr[data-pool]').length",
    )
    .await?;
    assert_eq!(seen, json!(0), "alpha sees no pool of beta's");
    screenshot(&c, "tenant-pools").await?;

    c.close().await?;
    up.shutdown().await;
    Ok(())
}

/// The console's figures at full scale (docs/BENCHMARKS.md, "The console"), measured in
/// Chromium against a `glory up` of `GLORY_CONSOLE_NODES` nodes: the overview's time
/// from sign-in to complete, its requests for nodes, the page's weight, frame times
/// while 100 nodes a second change state, and the filter's answer time; it writes
/// `target/console-bench.json`. The suite runs it at 200 nodes (it checks one request
/// for the nodes, a cell per node, every killed node shown down); the figures come from
/// `GLORY_CONSOLE_NODES=10000 cargo nextest run --release -p glory-tests --test browser
/// console_figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_figures_at_full_scale() -> anyhow::Result<()> {
    let nodes: u64 = std::env::var("GLORY_CONSOLE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let Console {
        _dir,
        up,
        api,
        base: _,
        _driver,
        c,
    } = console(
        nodes,
        (nodes as usize).div_ceil(250),
        Duration::from_secs(600),
    )
    .await?;
    let load = js(
        &c,
        "
        const m = performance.measure('overview', 'glory-signin', 'glory-overview');
        const res = performance.getEntriesByType('resource');
        const nav = performance.getEntriesByType('navigation')[0];
        const assets = res.filter(e => !e.name.includes('/api/'));
        const nodes = res.filter(e => e.name.includes('/api/v1/nodes'));
        return {
          overview_ms: m.duration,
          node_requests: nodes.length,
          nodes_transfer_bytes: nodes.reduce((a, e) => a + e.transferSize, 0),
          page_transfer_bytes: nav.transferSize + assets.reduce((a, e) => a + e.transferSize, 0),
          cells: document.querySelectorAll('#node-cells li[data-node-id]').length,
        };",
    )
    .await?;
    eprintln!("load: {load}");

    // Frame times while 100 nodes a second lose power (each goes suspect, then down).
    js(&c, "
        window.__frames = []; let last = performance.now();
        const f = (t) => { window.__frames.push(t - last); last = t; if (!window.__stop) requestAnimationFrame(f); };
        requestAnimationFrame(f); return true;").await?;
    let ids: Vec<String> = api
        .get(&format!(
            "/api/v1/nodes?view=summary&limit={}",
            (nodes / 2).clamp(1, 500)
        ))
        .await?["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    // 10 kills every 100 ms, each chunk sent at once: 100 nodes a second, 200 state
    // changes a second on the page (suspect, then down).
    let started = Instant::now();
    for chunk in ids.chunks(10) {
        let tick = tokio::time::sleep(Duration::from_millis(100));
        let kills: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (api, path) = (api.clone(), format!("/api/v1/sim/nodes/{id}/kill"));
                tokio::spawn(async move { api.call(Method::POST, &path, None).await })
            })
            .collect();
        for k in kills {
            k.await??;
        }
        tick.await;
    }
    let killing = started.elapsed();
    wait_js(
        &c,
        "every killed node shown down",
        Duration::from_secs(60),
        &format!(
            "return [...document.querySelectorAll('#node-cells li[data-state=down]')].length >= {}",
            ids.len()
        ),
    )
    .await?;
    let frames = js(&c, "
        window.__stop = true;
        const f = window.__frames.slice(1).sort((a, b) => a - b);
        return {count: f.length, p50: f[Math.floor(f.length * 0.5)], p99: f[Math.floor(f.length * 0.99)], max: f[f.length - 1]};").await?;
    eprintln!(
        "frames while {} nodes went down over {killing:?}: {frames}",
        ids.len()
    );

    // The filter's answer time, from the page.
    let filter = c
        .execute_async(
            "
            const done = arguments[arguments.length - 1];
            (async () => {
              const t = [];
              for (let i = 0; i < 20; i++) {
                const s = performance.now();
                const r = await fetch('/api/v1/nodes?view=summary&limit=50&sort=hostname&filter=' +
                  encodeURIComponent('state:up cpu>10 group:g07'), {credentials: 'same-origin'});
                await r.json();
                t.push(performance.now() - s);
              }
              t.sort((a, b) => a - b);
              done({p50: t[10], max: t[19]});
            })();",
            vec![],
        )
        .await?;
    eprintln!("filter answer: {filter}");
    assert_eq!(load["node_requests"], json!(1), "{load}");
    assert_eq!(load["cells"], json!(nodes), "{load}");
    let report = json!({"nodes": nodes, "load": load, "state_changes": {
        "nodes_killed": ids.len(), "over_seconds": killing.as_secs_f64(), "frames_ms": frames},
        "filter_ms": filter});
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    c.close().await?;
    up.shutdown().await;
    Ok(())
}

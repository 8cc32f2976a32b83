//! Remote power control through the API against real BMC emulators: the `ipmi` driver
//! (ipmitool, lanplus) against OpenIPMI's `ipmi_sim`, the `redfish` driver against
//! sushy-tools' Redfish emulator. BMC passwords are sealed in the key master and never
//! shown; bulk actions report every node's result.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use glory::client::ApiClient;
use glory::up::{Up, UpOptions};
use glory_tests::procs::{free_tcp, free_udp};
use serde_json::{json, Value};

const PASSWORD: &str = "glorypass";

/// A BMC emulator process, killed when dropped.
struct Emulator(std::process::Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lab_script(kind: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lab")
        .join(kind)
        .join("start.sh")
}

fn start(kind: &str, port: u16, dir: &Path) -> anyhow::Result<Emulator> {
    let log = std::fs::File::create(dir.join(format!("{kind}.log")))?;
    let child = std::process::Command::new(lab_script(kind))
        .arg(port.to_string())
        .arg(dir.join(kind))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(Emulator(child))
}

async fn call(
    api: &ApiClient,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    api.request(method, path, body)
        .await
        .expect("the API answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_and_redfish_bmcs_obey_the_api() -> anyhow::Result<()> {
    use reqwest::Method;
    glory_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let ipmi_port = free_udp().port();
    let redfish_port = free_tcp().port();
    let _ipmi = start("ipmi", ipmi_port, dir.path())?;
    let _redfish = start("redfish", redfish_port, dir.path())?;
    let up = Up::start(UpOptions {
        data_dir: dir.path().join("cluster"),
        nodes: 3,
        groups: 1,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    let (nodes, _) = glory_tests::wait::until("3 nodes", Duration::from_secs(60), || async {
        let r = api.get("/api/v1/nodes").await.map_err(|e| e.to_string())?;
        let ids: Vec<String> = r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect();
        (ids.len() == 3).then_some(ids).ok_or(r.to_string())
    })
    .await?;
    let (ipmi_node, redfish_node, bare_node) = (&nodes[0], &nodes[1], &nodes[2]);

    // BMC settings: stored, shown without the password.
    let (status, body) = call(
        &api,
        Method::PUT,
        &format!("/api/v1/nodes/{ipmi_node}/bmc"),
        Some(
            json!({"driver": "ipmi", "address": "127.0.0.1", "port": ipmi_port,
                    "user": "admin", "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["password_set"], true);
    assert!(!body.to_string().contains(PASSWORD), "{body}");
    let (status, body) = call(
        &api,
        Method::PUT,
        &format!("/api/v1/nodes/{redfish_node}/bmc"),
        Some(
            json!({"driver": "redfish", "address": "http://127.0.0.1", "port": redfish_port,
                    "user": "admin", "password": PASSWORD, "system_id": "glory-fake-0001"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let shown = api
        .get(&format!("/api/v1/nodes/{redfish_node}/bmc"))
        .await?;
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    assert_eq!(shown["driver"], "redfish");

    // Bad input: a clear 400, 404 or 409, and nothing stored.
    let (status, body) = call(
        &api,
        Method::PUT,
        &format!("/api/v1/nodes/{bare_node}/bmc"),
        Some(json!({"driver": "telnet", "address": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(&api, Method::GET, "/api/v1/nodes/no-such-node/power", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/api/v1/nodes/{bare_node}/power"),
        Some(json!({"action": "on"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no BMC settings"),
        "{body}"
    );
    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/api/v1/nodes/{ipmi_node}/power"),
        Some(json!({"action": "explode"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // IPMI: status, on, pxe (boot device set), off; each answer the state after.
    for (action, want) in [("on", "on"), ("pxe", "on"), ("off", "off")] {
        let (status, body) = call(
            &api,
            Method::POST,
            &format!("/api/v1/nodes/{ipmi_node}/power"),
            Some(json!({"action": action})),
        )
        .await;
        assert_eq!(status, 200, "ipmi {action}: {body}");
        assert_eq!(body["state"], want, "ipmi {action}: {body}");
        assert_eq!(body["driver"], "ipmi");
    }
    let boot_device =
        std::fs::read_to_string(dir.path().join("ipmi").join("boot")).unwrap_or_default();
    assert!(
        boot_device.contains("pxe"),
        "ipmi_sim's boot device: {boot_device:?}"
    );
    let body = api.get(&format!("/api/v1/nodes/{ipmi_node}/power")).await?;
    assert_eq!(body["state"], "off", "{body}");
    assert!(body["checked_at"].as_u64().unwrap_or(0) > 0);

    // Redfish: on (the emulator takes a few seconds), then its state read back.
    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/api/v1/nodes/{redfish_node}/power"),
        Some(json!({"action": "on"})),
    )
    .await;
    assert_eq!(status, 200, "redfish on: {body}");
    assert_eq!(body["state"], "on", "{body}");
    let body = api
        .get(&format!("/api/v1/nodes/{redfish_node}/power"))
        .await?;
    assert_eq!(body["state"], "on", "{body}");

    // Bulk: every node's result, never a silent stop halfway.
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/power",
        Some(json!({"action": "off", "nodes": [ipmi_node, redfish_node, bare_node]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 3, "{body}");
    assert_eq!(body["succeeded"], 2, "{body}");
    assert_eq!(body["failed"], 1, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items[2]["node"], bare_node.as_str());
    assert!(
        items[2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no BMC settings"),
        "{body}"
    );
    assert_eq!(items[0]["state"], "off");
    assert_eq!(items[1]["state"], "off");
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/power",
        Some(json!({"action": "on", "filter": {"group": "g00"}, "nodes": [ipmi_node]})),
    )
    .await;
    assert_eq!(status, 422, "nodes and filter together: {body}");

    // A wrong password: 502 naming the BMC, never the password.
    call(
        &api,
        Method::PUT,
        &format!("/api/v1/nodes/{ipmi_node}/bmc"),
        Some(
            json!({"driver": "ipmi", "address": "127.0.0.1", "port": ipmi_port,
                    "user": "admin", "password": "wrong-secret"}),
        ),
    )
    .await;
    let (status, body) = call(
        &api,
        Method::GET,
        &format!("/api/v1/nodes/{ipmi_node}/power"),
        None,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.to_string().contains("wrong-secret"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("127.0.0.1"),
        "{body}"
    );
    up.shutdown().await;

    // Sealed at rest: the key master's files never hold a password in clear.
    for entry in std::fs::read_dir(dir.path().join("cluster"))? {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            for secret in [PASSWORD, "wrong-secret"] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a BMC password in clear",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

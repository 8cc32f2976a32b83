//! The lab: real QEMU virtual machines (TCG) PXE-boot from our provisioner (our DHCP,
//! TFTP and HTTP; no dnsmasq) inside a network namespace, run the enrollment
//! environment it built (Debian's kernel, busybox, the agent) and enroll with a token
//! minted for that boot; the `qemu` power driver turns them off and on.
//!
//! One test runs the scenarios one after another (each VM costs a core while it
//! boots): a BIOS VM and a UEFI VM (OVMF's own PXE, `ipxe.efi` over TFTP) enroll with
//! their real memory and MAC; one is powered off (down) and on (up again, same node
//! id); then, in a second lab whose boot tokens live one second, a VM's enrollment is
//! refused and its boot is `failed`, saying why.
//!
//! Then OS images (issue 19): an image built by `glory image build` (mmdebstrap,
//! systemd, the agent) is deployed to the BIOS VM diskless and then to its virtual
//! disk; each time it comes back `up` as the same node, reporting the image, with its
//! first-boot configuration applied (hostname, SSH key; a changed key applied again).

use std::net::SocketAddr;
use std::time::Duration;

use glory::client::ApiClient;
use glory::up::{Up, UpOptions};
use glory_tests::wait::until;
use serde_json::Value;

const MEMORY_MIB: u32 = 512;

fn lab_options(
    dir: &std::path::Path,
    vms: usize,
    uefi: usize,
    ttl: u64,
) -> anyhow::Result<UpOptions> {
    Ok(UpOptions {
        data_dir: dir.to_path_buf(),
        nodes: 4,
        groups: 1,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        lab_vms: vms,
        lab_uefi: uefi,
        lab_memory_mib: MEMORY_MIB,
        lab_disk_mib: 512,
        boot_token_ttl_seconds: ttl,
        lab_agent_binary: Some(glory_tests::binary("glory-node-agent")?),
        ..Default::default()
    })
}

async fn boot_of(api: &ApiClient, mac: &str) -> Result<Value, String> {
    api.get(&format!("/api/v1/boot/{mac}"))
        .await
        .map_err(|e| e.to_string())
}

async fn node_state(api: &ApiClient, node: &str) -> Result<Value, String> {
    api.get(&format!("/api/v1/nodes/{node}"))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_vms_pxe_boot_enroll_and_obey_power() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let up = Up::start(lab_options(dir.path(), 2, 1, 600)?).await?;
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    let vms = up.lab.as_ref().expect("a lab").vms.clone();
    let mut nodes = Vec::new();
    for vm in &vms {
        let (boot, took) = until(
            &format!(
                "{} ({}) enrolled",
                vm.name,
                if vm.uefi { "UEFI" } else { "BIOS" }
            ),
            Duration::from_secs(300),
            || async {
                let b = boot_of(&api, &vm.mac).await?;
                match b["state"].as_str() {
                    Some("enrolled") => Ok(b),
                    Some("failed") => Ok(b),
                    _ => Err(b.to_string()),
                }
            },
        )
        .await?;
        assert_eq!(boot["state"], "enrolled", "{}: {boot}", vm.name);
        eprintln!("{} enrolled after {took:?}: {boot}", vm.name);
        let node = boot["node"].as_str().expect("a node id").to_string();
        let n = node_state(&api, &node).await.map_err(anyhow::Error::msg)?;
        let memory = n["inventory"]["memory_bytes"].as_u64().unwrap_or(0);
        let configured = u64::from(MEMORY_MIB) << 20;
        assert!(
            memory > configured * 8 / 10 && memory <= configured,
            "{}: reported memory {memory} for -m {MEMORY_MIB}M",
            vm.name
        );
        let macs: Vec<&str> = n["inventory"]["nics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|nic| nic["mac"].as_str())
            .collect();
        assert!(
            macs.iter().any(|m| m.eq_ignore_ascii_case(&vm.mac)),
            "{}: NICs {macs:?}, VM's MAC {}",
            vm.name,
            vm.mac
        );
        assert_eq!(n["inventory"]["simulated"], false);
        nodes.push(node);
    }
    // The UEFI VM went through OVMF's PXE and ipxe.efi from our TFTP server.
    let uefi = vms.iter().find(|v| v.uefi).expect("a UEFI VM");
    let console = std::fs::read_to_string(&uefi.console).unwrap_or_default();
    assert!(console.contains("iPXE"), "UEFI console:\n{console}");

    // Power: off through the qemu driver, the node goes down within the detector's
    // time; on again, it boots and comes back as the same node.
    let node = &nodes[0];
    let r = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{node}/power"),
            Some(serde_json::json!({"action": "off"})),
        )
        .await?;
    assert_eq!(r["state"], "off", "{r}");
    assert_eq!(r["driver"], "qemu", "{r}");
    until(
        "the powered-off node down",
        Duration::from_secs(30),
        || async {
            let n = node_state(&api, node).await?;
            (n["state"] == "down")
                .then_some(())
                .ok_or(n["state"].to_string())
        },
    )
    .await?;
    let status = api.get(&format!("/api/v1/nodes/{node}/power")).await?;
    assert_eq!(status["state"], "off", "{status}");
    api.call(
        reqwest::Method::POST,
        &format!("/api/v1/nodes/{node}/power"),
        Some(serde_json::json!({"action": "on"})),
    )
    .await?;
    let (_, took) = until(
        "the powered-on node up again",
        Duration::from_secs(300),
        || async {
            let n = node_state(&api, node).await?;
            (n["state"] == "up")
                .then_some(())
                .ok_or(n["state"].to_string())
        },
    )
    .await?;
    eprintln!("{node} up again {took:?} after power on");
    let boot = boot_of(&api, &vms[0].mac)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(boot["node"].as_str(), Some(node.as_str()), "{boot}");
    // A power action without BMC settings is a clear 409; an unknown node a 404.
    let (status, body) = api
        .request(
            reqwest::Method::POST,
            "/api/v1/nodes/no-such-node/power",
            Some(serde_json::json!({"action": "on"})),
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    let provisioner = up.provisioner_http.expect("the lab's provisioner");
    deploy_images(&api, node, &vms[0], provisioner).await?;
    up.shutdown().await;

    // A boot whose token expired before the machine enrolled: refused, `failed`, why.
    let dir = tempfile::tempdir()?;
    let up = Up::start(lab_options(dir.path(), 1, 0, 1)?).await?;
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    let vm = up.lab.as_ref().expect("a lab").vms[0].clone();
    let (boot, _) = until(
        "the expired boot failed",
        Duration::from_secs(300),
        || async {
            let b = boot_of(&api, &vm.mac).await?;
            (b["state"] == "failed")
                .then_some(b.clone())
                .ok_or(b.to_string())
        },
    )
    .await?;
    let detail = boot["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("expired"), "{boot}");
    assert!(boot["node"].is_null(), "never enrolled: {boot}");
    up.shutdown().await;
    Ok(())
}

async fn power(api: &ApiClient, node: &str, action: &str) -> anyhow::Result<()> {
    api.call(
        reqwest::Method::POST,
        &format!("/api/v1/nodes/{node}/power"),
        Some(serde_json::json!({ "action": action })),
    )
    .await?;
    Ok(())
}

/// Wait until `node` runs image `name`, up, and has applied its configuration.
async fn running_image(api: &ApiClient, node: &str, name: &str) -> anyhow::Result<Value> {
    let (n, took) = until(
        &format!("{node} up on image {name}"),
        Duration::from_secs(300),
        || async {
            let n = node_state(api, node).await?;
            let setup = api
                .get(&format!("/api/v1/nodes/{node}/setup"))
                .await
                .map_err(|e| e.to_string())?;
            let ok = n["state"] == "up"
                && n["inventory"]["image"] == name
                && setup["config"]["in_sync"] == true;
            ok.then_some(n.clone())
                .ok_or(format!("{} / {}", n["inventory"], setup["config"]))
        },
    )
    .await?;
    eprintln!("{node} up on image {name} after {took:?}");
    Ok(n)
}

async fn deploy_images(
    api: &ApiClient,
    node: &str,
    vm: &glory::lab::LabVm,
    provisioner: SocketAddr,
) -> anyhow::Result<()> {
    let built = std::time::Instant::now();
    let image = glory::image_build::build(
        api,
        glory::image_build::BuildOptions {
            name: "lab".into(),
            suite: "bookworm".into(),
            packages: vec![],
            mirror: None,
            agent: Some(glory_tests::binary("glory-node-agent")?),
            description: String::new(),
        },
    )
    .await?;
    assert_eq!(image["version"], 1, "{image}");
    eprintln!("image built and uploaded in {:?}: {image}", built.elapsed());
    let profile = |key: &str, mode: &str| {
        serde_json::json!({
            "image": "lab",
            "mode": mode,
            "match": {"nodes": [node]},
            "config": {
                "hostname": "lab-{{ node.id[2:8] }}",
                "ssh_authorized_keys": [format!("ssh-ed25519 {key} ops@glory")],
            },
        })
    };
    let put = |body: Value| async move {
        api.call(
            reqwest::Method::PUT,
            "/api/v1/profiles/deploy-lab",
            Some(body),
        )
        .await
    };
    put(profile("AAAAfirst", "diskless")).await?;
    let deploy = |mode: &str| glory::cli_images::DeployArgs {
        image: "lab".into(),
        version: None,
        mode: mode.into(),
        filter: vec![format!("node={node}")],
        profile: None,
        no_reboot: false,
        timeout: 300,
    };

    // Diskless (`glory deploy`: the profile keeps its configuration, the node is
    // power-cycled and followed): the root filesystem in RAM, the same node id, the
    // image reported, the configuration applied (the hostname is the running one).
    let t = std::time::Instant::now();
    glory::cli_images::deploy(api, deploy("diskless"), false).await?;
    eprintln!(
        "deploy diskless: power cycle to up on the image in {:?}",
        t.elapsed()
    );
    let n = running_image(api, node, "lab").await?;
    assert_eq!(n["inventory"]["image_version"], 1, "{n}");
    let hostname = format!("lab-{}", &node[2..8]);
    until("the rendered hostname", Duration::from_secs(60), || async {
        let n = node_state(api, node).await?;
        (n["inventory"]["hostname"] == hostname.as_str())
            .then_some(())
            .ok_or(n["inventory"]["hostname"].to_string())
    })
    .await?;
    // Peer-to-peer (issue 19): the initramfs fetched the root filesystem with aria2c
    // from the provisioner's seeder and tracker, and stayed in the swarm as a seeder.
    let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
    assert!(
        console.contains("fetching the root filesystem peer-to-peer")
            && console.contains("fetched peer-to-peer"),
        "{console}"
    );
    let rootfs = image["rootfs"]["sha256"].as_str().expect("rootfs sha256");
    let size = image["rootfs"]["size"].as_u64().expect("rootfs size");
    // The seeder reports what it uploaded when it announces (every 10 s).
    let (swarm, _) = until("the swarm's report", Duration::from_secs(60), || async {
        let swarm: Value = reqwest::get(format!("http://{provisioner}/torrent/{rootfs}/swarm"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let whole = swarm["seeder_uploaded"].as_u64().unwrap_or(0) >= size;
        (whole && swarm["completed"] == 1)
            .then_some(swarm.clone())
            .ok_or(swarm.to_string())
    })
    .await?;
    eprintln!("the image's swarm on the provisioner: {swarm}");
    // A changed key is applied again, without a reboot.
    let before = api.get(&format!("/api/v1/nodes/{node}/setup")).await?;
    put(profile("AAAAsecond", "diskless")).await?;
    until(
        "the changed key applied",
        Duration::from_secs(60),
        || async {
            let s = api
                .get(&format!("/api/v1/nodes/{node}/setup"))
                .await
                .map_err(|e| e.to_string())?;
            let changed = s["config"]["applied_hash"] != before["config"]["applied_hash"];
            (changed && s["config"]["in_sync"] == true)
                .then_some(())
                .ok_or(s["config"].to_string())
        },
    )
    .await?;

    // Disk: written to the virtual disk and checked, then booted from it; the next
    // boot finds it there and writes nothing.
    std::fs::write(&vm.console, "")?;
    let t = std::time::Instant::now();
    glory::cli_images::deploy(api, deploy("disk"), false).await?;
    eprintln!(
        "deploy to disk: power cycle to up on the image in {:?}",
        t.elapsed()
    );
    let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
    assert!(
        console.contains("writing the image to /dev/vda"),
        "{console}"
    );
    running_image(api, node, "lab").await?;
    std::fs::write(&vm.console, "")?;
    let t = std::time::Instant::now();
    power(api, node, "cycle").await?;
    until(
        "booted from the disk again",
        Duration::from_secs(300),
        || async {
            let c = std::fs::read_to_string(&vm.console).unwrap_or_default();
            c.contains("booting the image")
                .then_some(())
                .ok_or(String::new())
        },
    )
    .await?;
    let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
    assert!(
        console.contains("/dev/vda already holds the image"),
        "{console}"
    );
    running_image(api, node, "lab").await?;
    eprintln!(
        "boot from disk again: power cycle to up on the image in {:?}",
        t.elapsed()
    );
    // The node runs it: the image cannot be deleted, even with no profile naming it.
    api.call(reqwest::Method::DELETE, "/api/v1/profiles/deploy-lab", None)
        .await?;
    let (status, e) = api
        .request(reqwest::Method::DELETE, "/api/v1/images/lab", None)
        .await?;
    assert_eq!(status, 409, "{e}");
    assert!(e.to_string().contains(node), "{e}");
    Ok(())
}

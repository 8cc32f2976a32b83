//! The `keepalived` balancer driver against the real `keepalived -t` (Debian's 2.2,
//! installed by ./test.sh): what glory renders is accepted, what keepalived refuses
//! never replaces the running configuration, and a running keepalived is told to
//! reload. (keepalived's LVS itself needs IPVS, which these machines' kernel lacks.)

use std::time::Duration;

use glory_service_manager::balancer::keepalived::{render, Keepalived};
use glory_service_manager::balancer::Backend;
use glory_service_manager::spec::Algorithm;

fn backend(name: &str, addr: &str) -> Backend {
    Backend {
        name: name.into(),
        addr: addr.parse().unwrap(),
        weight: 1,
    }
}

#[tokio::test]
async fn keepalived_accepts_what_we_render_and_reloads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let k = Keepalived::new(
        dir.path().join("keepalived.conf"),
        dir.path().join("keepalived.pid"),
    )?;
    let listen = "10.99.0.1:8080".parse()?;
    let two = render(
        "web",
        listen,
        Algorithm::Roundrobin,
        &[
            backend("i-1", "10.99.1.5:9001"),
            backend("i-2", "10.99.1.6:9001"),
        ],
    );
    let applied = k.apply(&two).await?;
    assert!(applied.changed && !applied.reloaded, "{applied:?}");
    assert_eq!(std::fs::read_to_string(&k.config)?, two);
    assert!(
        !k.apply(&two).await?.changed,
        "the same configuration again changes nothing"
    );

    // A running keepalived (a stand-in that records SIGHUP) is told to reload.
    let marker = dir.path().join("hup");
    let mut fake = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup > {}' HUP; while :; do sleep 0.1; done",
            marker.display()
        ))
        .kill_on_drop(true)
        .spawn()?;
    std::fs::write(&k.pid_file, fake.id().expect("a pid").to_string())?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let one = render(
        "web",
        listen,
        Algorithm::Leastconn,
        &[backend("i-2", "10.99.1.6:9001")],
    );
    let applied = k.apply(&one).await?;
    assert!(applied.changed && applied.reloaded, "{applied:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "no SIGHUP arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = fake.kill().await;

    // keepalived's refusal, in its own words; the running configuration stays.
    let bad = "virtual_server 10.99.0.1 8080 {\n    lb_algo bogus\n    lb_kind NAT\n    protocol TCP\n    real_server 10.99.1.300 9001 {\n    }\n}\n";
    let err = k.apply(bad).await.expect_err("keepalived refuses it");
    let text = err.to_string();
    assert!(text.contains("keepalived refused"), "{text}");
    assert!(
        text.contains("bogus") || text.contains("10.99.1.300"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&k.config)?, one);
    Ok(())
}

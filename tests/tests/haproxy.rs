//! The `haproxy` balancer driver against a real HAProxy (Debian's 2.6, installed by
//! ./test.sh): servers added, reweighted, drained and removed through the runtime API
//! with no reload, traffic spread over them, and a scale-down under load that fails no
//! request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glory_service_manager::balancer::haproxy::Haproxy;
use glory_service_manager::balancer::Backend;
use glory_service_manager::spec::Algorithm;
use glory_tests::procs::free_tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny HTTP/1.0 server answering its letter.
async fn instance(letter: char) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n{letter}").as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One request through the balancer: the letter of the instance that answered.
async fn request(listen: SocketAddr) -> anyhow::Result<char> {
    let mut s = tokio::net::TcpStream::connect(listen).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    out.chars()
        .last()
        .filter(|c| c.is_ascii_uppercase() && out.starts_with("HTTP/1.0 200"))
        .ok_or_else(|| anyhow::anyhow!("bad answer {out:?}"))
}

async fn letters(listen: SocketAddr, n: usize) -> anyhow::Result<String> {
    let mut seen = String::new();
    for _ in 0..n {
        seen.push(request(listen).await?);
    }
    Ok(seen)
}

fn backend(name: &str, addr: SocketAddr, weight: u32) -> Backend {
    Backend {
        name: name.into(),
        addr,
        weight,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_the_healthy_instances_without_a_reload() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (instance('A').await?, instance('B').await?);
    let listen = free_tcp();
    let haproxy = Haproxy::start(dir.path(), listen, Algorithm::Roundrobin).await?;
    let pid_before = haproxy.command("show info").await?;

    let report = haproxy
        .sync(
            &[backend("i-a", a, 1), backend("i-b", b, 1)],
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(report.added, 2, "{report:?}");
    let seen = letters(listen, 20).await?;
    assert!(
        seen.contains('A') && seen.contains('B'),
        "traffic spread: {seen}"
    );

    // Scale down under load: i-a is drained, then removed; no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request(listen).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = haproxy
        .sync(&[backend("i-b", b, 1)], Duration::from_secs(5))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert_eq!(report.removed, 1, "{report:?}");
    assert_eq!(report.cut, 0, "{report:?}");
    assert!(ok.load(Ordering::Relaxed) > 10, "the load ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed during the scale-down"
    );
    assert_eq!(letters(listen, 10).await?, "B".repeat(10));
    let servers = haproxy.servers().await?;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].name, "i-b");

    // A weight change, and a bad name refused with HAProxy's own words.
    let report = haproxy
        .sync(&[backend("i-b", b, 3)], Duration::from_secs(5))
        .await?;
    assert_eq!(report.reweighted, 1, "{report:?}");
    assert_eq!(haproxy.servers().await?[0].weight, 3);
    let err = haproxy
        .sync(
            &[backend("i-b", b, 3), backend("bad name", a, 1)],
            Duration::from_secs(5),
        )
        .await
        .expect_err("a name with a space");
    assert!(err.to_string().contains("HAProxy"), "{err}");

    // The same process all along: no reload.
    let pid = |info: &str| {
        info.lines()
            .find(|l| l.starts_with("Pid:"))
            .map(str::to_string)
    };
    assert_eq!(pid(&haproxy.command("show info").await?), pid(&pid_before));
    haproxy.stop().await;
    Ok(())
}

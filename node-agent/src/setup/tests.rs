use super::*;
use glory_content::sha256_hex;

fn file(path: &str, content: &str, mode: u32) -> ConfigFile {
    ConfigFile {
        path: path.into(),
        mode,
        content: content.into(),
    }
}

#[test]
fn configuration_is_applied_checked_and_repaired() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("setup.json");
    let setup = Setup::new(Some(root.clone()), Some(state.clone()), None);
    let config = config_of(
        vec![
            file(
                "/root/.ssh/authorized_keys",
                "ssh-ed25519 AAAA ops\n",
                0o600,
            ),
            file("/etc/motd", "hello\n", 0o644),
        ],
        true,
    );
    setup.apply_config(Some(config.clone()));
    let keys = root.join("root/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAA ops\n"
    );
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let report = setup.report();
    assert_eq!(report.config_hash.as_deref(), Some(config.hash.as_str()));
    assert_eq!(report.config_error, None);

    // Someone edits a file: drift found and repaired.
    std::fs::write(root.join("etc/motd"), "defaced\n").unwrap();
    setup.check_drift();
    assert_eq!(setup.report().drift, vec!["/etc/motd".to_string()]);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hello\n"
    );
    setup.check_drift();
    assert!(setup.report().drift.is_empty());

    // A restarted agent remembers what it applied; report-only leaves the file.
    let mut report_only = config.clone();
    report_only.repair = false;
    setup.apply_config(Some(report_only));
    let again = Setup::new(Some(root.clone()), Some(state), None);
    assert_eq!(again.report().config_hash, Some(config.hash.clone()));
    std::fs::remove_file(root.join("etc/motd")).unwrap();
    again.check_drift();
    assert_eq!(again.report().drift, vec!["/etc/motd".to_string()]);
    assert!(!root.join("etc/motd").exists());

    // No root: nothing written, and the report says why.
    let none = Setup::new(None, None, None);
    none.apply_config(Some(config));
    let report = none.report();
    assert_eq!(report.config_hash, None);
    assert!(report.config_error.unwrap().contains("setup_root"));
}

fn package(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, path, *content).unwrap();
    }
    let bytes = tar.into_inner().unwrap();
    zstd::encode_all(&bytes[..], 3).unwrap()
}

/// A one-shot HTTP server handing out `body` to every request.
async fn serve(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/content/x")
}

async fn settle(setup: &Arc<Setup>) {
    for _ in 0..200 {
        if setup.lock().installing.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("installs did not finish");
}

#[tokio::test]
async fn packages_install_atomically_and_corrupt_downloads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let setup = Setup::new(Some(root.clone()), None, None);
    let v1 = package(&[("bin/tool", b"#!/bin/sh\necho v1\n"), ("README", b"v1")]);
    let spec1 = PackageSpec {
        name: "tool".into(),
        version: "1.0".into(),
        sha256: sha256_hex(&v1),
        size: v1.len() as u64,
        url: serve(v1.clone()).await,
        torrent: None,
    };
    setup.set_software(vec![spec1.clone()]);
    settle(&setup).await;
    let home = root.join(SOFTWARE_DIR).join("tool");
    assert_eq!(
        std::fs::read_to_string(home.join("current/bin/tool")).unwrap(),
        "#!/bin/sh\necho v1\n"
    );
    let report = setup.report();
    assert_eq!(report.installed.len(), 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");

    // Version 2 arrives corrupted (its bytes differ from its hash): refused, nothing
    // of it left, version 1 still current.
    let v2 = package(&[("bin/tool", b"#!/bin/sh\necho v2\n")]);
    let mut corrupt = v2.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    let spec2 = PackageSpec {
        name: "tool".into(),
        version: "2.0".into(),
        sha256: sha256_hex(&v2),
        size: v2.len() as u64,
        url: serve(corrupt).await,
        torrent: None,
    };
    setup.set_software(vec![spec2.clone()]);
    settle(&setup).await;
    let report = setup.report();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.installed[0].version, "1.0");
    assert!(!home.join("2.0").exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.join(SOFTWARE_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["tool".to_string()], "staging left behind");
    assert_eq!(
        std::fs::read_to_string(home.join("current/bin/tool")).unwrap(),
        "#!/bin/sh\necho v1\n"
    );

    // Served right, version 2 replaces version 1.
    let spec2 = PackageSpec {
        url: serve(v2).await,
        torrent: None,
        ..spec2
    };
    setup.set_software(vec![spec2]);
    settle(&setup).await;
    let report = setup.report();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.installed[0].version, "2.0");
    assert!(!home.join("1.0").exists());

    // No longer wanted: removed.
    setup.set_software(vec![]);
    settle(&setup).await;
    assert!(setup.report().installed.is_empty());
    assert!(!home.exists());
}

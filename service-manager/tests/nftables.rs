//! The `nftables` balancer driver against the real kernel, in network namespaces
//! made here (root): a balancer namespace holds the service address and the driver's
//! table, a client namespace connects to the service address, a backend namespace
//! runs small TCP servers that answer with their name and the peer they see.
//!
//! ```text
//!  client 10.231.1.2 ──── 10.231.1.1 balancer 10.231.2.1 ──── backends 10.231.2.2-4:9000
//!                      (service 10.231.1.1:8080)
//! ```
//!
//! Needs `nft` (Debian's `nftables`), `ip` (`iproute2`) and `python3`; fails, saying what
//! to install, when one is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use glory_service_manager::balancer::nftables::{slots, NftBalancer, Options};
use glory_service_manager::balancer::Backend;
use glory_service_manager::spec::Algorithm;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A backend: accepts, greets with `NAME PEER_IP`, then echoes each line as `NAME LINE`.
const SERVER: &str = r#"
import socket, sys, threading
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(128)
print("ready", flush=True)
def serve(c, peer):
    with c:
        c.sendall(f"{name} {peer[0]}\n".encode())
        for line in c.makefile("rb"):
            c.sendall(f"{name} {line.decode()}".encode())
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"#;

/// The client, one command per line, one answer line each: `new SRC` (a new connection
/// from SRC, `-` for any, closed after the greeting), `open` (a connection kept open),
/// `ping` (a line on the kept connection). Failures answer `ERR ...`.
const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
kept = None
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "new":
            src = None if cmd[1] == "-" else (cmd[1], 0)
            with socket.create_connection((host, port), timeout=3, source_address=src) as s:
                out = s.makefile().readline().strip()
        elif cmd[0] == "open":
            kept = socket.create_connection((host, port), timeout=3)
            kept_file = kept.makefile()
            out = kept_file.readline().strip()
        else:
            kept.sendall(b"ping\n")
            out = kept_file.readline().strip()
        out = out or "ERR closed"
    except Exception as e:
        out = f"ERR {type(e).__name__} {e}"
    print(out, flush=True)
"#;

const SERVICE: &str = "10.231.1.1:8080";
const BALANCER_ON_BACKEND_SIDE: &str = "10.231.2.1";
const BACKENDS: [(&str, &str); 3] = [
    ("b1", "10.231.2.2:9000"),
    ("b2", "10.231.2.3:9000"),
    ("b3", "10.231.2.4:9000"),
];

fn installed(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(tool).exists())
}

fn require_tools() {
    for (tool, package) in [
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("python3", "python3"),
    ] {
        assert!(
            installed(tool),
            "`{tool}` is missing: install the Debian package {package} \
             (apt-get install {package}; ./test.sh installs it)"
        );
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "`ip {}` failed (this test needs root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn backends(names: &[&str]) -> Vec<Backend> {
    BACKENDS
        .iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(name, addr)| Backend {
            name: name.to_string(),
            addr: addr.parse().unwrap(),
            weight: 1,
        })
        .collect()
}

/// Namespaces, links and processes of one test; all removed when dropped, also when
/// the test fails.
struct Lab {
    balancer: String,
    client: String,
    backend: String,
    namespaces: Vec<String>,
    links: Vec<String>,
    children: Vec<Child>,
    client_in: Option<ChildStdin>,
    client_out: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
}

impl Lab {
    /// `tag` tells the tests of this process apart. `gateway`: the backends' default
    /// route is the balancer (needed when it does not masquerade).
    async fn new(tag: &str, gateway: bool) -> Lab {
        require_tools();
        let pid = std::process::id();
        let ns = |role: &str| format!("glory-nft-{pid}-{tag}-{role}");
        let mut lab = Lab {
            balancer: ns("bal"),
            client: ns("cli"),
            backend: ns("be"),
            namespaces: Vec::new(),
            links: Vec::new(),
            children: Vec::new(),
            client_in: None,
            client_out: None,
        };
        for name in [&lab.balancer, &lab.client, &lab.backend] {
            ip(&["netns", "add", name]);
            lab.namespaces.push(name.clone());
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        let (bal, cli, be) = (
            lab.balancer.clone(),
            lab.client.clone(),
            lab.backend.clone(),
        );
        // Two veth pairs: client-balancer and balancer-backends.
        for (n, far, far_addrs, near_addr) in [
            (1, &cli, vec!["10.231.1.2/24"], "10.231.1.1/24"),
            (
                2,
                &be,
                vec!["10.231.2.2/24", "10.231.2.3/24", "10.231.2.4/24"],
                "10.231.2.1/24",
            ),
        ] {
            let (far_end, near_end) = (format!("n{pid}{tag}{n}a"), format!("n{pid}{tag}{n}b"));
            ip(&[
                "link", "add", &far_end, "type", "veth", "peer", "name", &near_end,
            ]);
            lab.links.push(far_end.clone());
            ip(&["link", "set", &far_end, "netns", far]);
            ip(&["link", "set", &near_end, "netns", &bal]);
            for addr in far_addrs {
                ip(&["-n", far, "addr", "add", addr, "dev", &far_end]);
            }
            ip(&["-n", far, "link", "set", &far_end, "up"]);
            ip(&["-n", &bal, "addr", "add", near_addr, "dev", &near_end]);
            ip(&["-n", &bal, "link", "set", &near_end, "up"]);
        }
        ip(&["-n", &cli, "route", "add", "default", "via", "10.231.1.1"]);
        if gateway {
            ip(&[
                "-n",
                &be,
                "route",
                "add",
                "default",
                "via",
                BALANCER_ON_BACKEND_SIDE,
            ]);
        }
        ip(&[
            "netns",
            "exec",
            &bal,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]);

        for (name, addr) in BACKENDS {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut child = lab.spawn(
                &be,
                &[
                    "-c",
                    SERVER,
                    name,
                    &addr.ip().to_string(),
                    &addr.port().to_string(),
                ],
            );
            let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
            lab.children.push(child);
            let ready = tokio::time::timeout(Duration::from_secs(10), out.next_line()).await;
            assert!(
                matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"),
                "backend {name} did not start listening on {addr} within 10 s: {ready:?}"
            );
        }
        let service: SocketAddr = SERVICE.parse().unwrap();
        let mut client = lab.spawn(
            &cli,
            &[
                "-c",
                CLIENT,
                &service.ip().to_string(),
                &service.port().to_string(),
            ],
        );
        lab.client_in = client.stdin.take();
        lab.client_out = Some(BufReader::new(client.stdout.take().unwrap()).lines());
        lab.children.push(client);
        lab
    }

    fn spawn(&self, netns: &str, python_args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", netns, "python3"])
            .args(python_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 in a namespace")
    }

    /// One client command; its answer.
    async fn client(&mut self, command: &str) -> String {
        let stdin = self.client_in.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self.client_out.as_mut().unwrap().next_line(),
        )
        .await;
        match answer {
            Ok(Ok(Some(line))) => line,
            other => panic!("the client gave no answer to `{command}` within 10 s: {other:?}"),
        }
    }

    /// A new connection from `source` (`-`: the client's own address): the backend's
    /// name and the peer address it saw.
    async fn connect(&mut self, source: &str) -> (String, String) {
        let answer = self.client(&format!("new {source}")).await;
        let mut parts = answer.split_whitespace();
        let (Some(name), Some(peer)) = (parts.next(), parts.next()) else {
            panic!("connection from {source} to {SERVICE}: {answer}");
        };
        assert!(
            !name.starts_with("ERR"),
            "connection from {source}: {answer}"
        );
        (name.to_string(), peer.to_string())
    }

    /// `n` new connections from the client's address: how many each backend took.
    async fn spread(&mut self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen.entry(self.connect("-").await.0).or_insert(0) += 1;
        }
        seen
    }

    fn driver(
        &self,
        service: &str,
        listen: &str,
        algorithm: Algorithm,
        masquerade: bool,
    ) -> NftBalancer {
        NftBalancer::new(
            service,
            listen.parse().unwrap(),
            algorithm,
            Options {
                netns: Some(self.balancer.clone()),
                masquerade,
            },
        )
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        for link in &self.links {
            // Gone with its namespace unless setup stopped half-way.
            let _ = std::process::Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        for ns in &self.namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Roundrobin with full NAT: every backend reached, a removed backend gets no new
/// connection while one it already had keeps working, weights, no backend, stop.
#[tokio::test]
async fn roundrobin_reaches_every_backend_and_a_removed_one_gets_no_new_connection() {
    let mut lab = Lab::new("r", false).await;
    let lb = lab.driver("web", SERVICE, Algorithm::Roundrobin, true);
    assert!(
        lb.forwarding().await.unwrap(),
        "the lab turned forwarding on"
    );

    // No backend: refused at once.
    lb.sync(&[]).await.unwrap();
    assert_eq!(lb.installed().await.unwrap(), Some(vec![]));
    let answer = lab.client("new -").await;
    assert!(answer.starts_with("ERR ConnectionRefused"), "{answer}");

    // Three backends: three connections each, in turn. The backends have no route to
    // the client: they see the balancer (full NAT).
    let all = backends(&["b1", "b2", "b3"]);
    lb.sync(&all).await.unwrap();
    assert_eq!(
        lb.installed().await.unwrap(),
        Some(slots(Algorithm::Roundrobin, &all).unwrap())
    );
    assert_eq!(
        lab.spread(9).await,
        counts(&[("b1", 3), ("b2", 3), ("b3", 3)])
    );
    assert_eq!(lab.connect("-").await.1, BALANCER_ON_BACKEND_SIDE);

    // A connection kept open, then its backend removed.
    let kept = lab.client("open").await;
    let kept_on = kept.split_whitespace().next().unwrap().to_string();
    assert!(kept_on.starts_with('b'), "open: {kept}");
    let rest: Vec<Backend> = all.iter().filter(|b| b.name != kept_on).cloned().collect();
    let synced = lb.sync(&rest).await.unwrap();
    assert_eq!(synced.backends, 2);
    assert_eq!(
        lb.installed().await.unwrap(),
        Some(slots(Algorithm::Roundrobin, &rest).unwrap())
    );
    let seen = lab.spread(10).await;
    let expected: BTreeSet<String> = rest.iter().map(|b| b.name.clone()).collect();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "new connections after {kept_on} was removed"
    );
    assert_eq!(lab.client("ping").await, format!("{kept_on} ping"));

    // Weights 3:1.
    let mut weighted = backends(&["b1", "b2"]);
    weighted[0].weight = 3;
    lb.sync(&weighted).await.unwrap();
    assert_eq!(lab.spread(8).await, counts(&[("b1", 6), ("b2", 2)]));
    assert_eq!(lab.client("ping").await, format!("{kept_on} ping"));

    // Stopped: the table is gone; stopping again is fine.
    lb.stop().await.unwrap();
    assert_eq!(lb.installed().await.unwrap(), None);
    lb.stop().await.unwrap();
    let answer = lab.client("new -").await;
    assert!(
        answer.starts_with("ERR"),
        "nothing balances any more: {answer}"
    );
}

/// Source hashing with the balancer as the backends' gateway (no masquerade: backends
/// see the clients): each client sticks to one backend, removing a backend moves only
/// its clients, and two services' tables live side by side.
#[tokio::test]
async fn source_keeps_each_client_on_its_backend_and_moves_only_the_removed_ones() {
    let mut lab = Lab::new("s", true).await;
    let sources: Vec<String> = (10..26).map(|i| format!("10.231.1.{i}")).collect();
    let link = format!("n{}s1a", std::process::id());
    for source in &sources {
        ip(&[
            "-n",
            &lab.client,
            "addr",
            "add",
            &format!("{source}/24"),
            "dev",
            &link,
        ]);
    }
    let lb = lab.driver("web", SERVICE, Algorithm::Source, false);
    let other = lab.driver("api", "10.231.1.1:8081", Algorithm::Roundrobin, false);
    let all = backends(&["b1", "b2", "b3"]);
    lb.sync(&all).await.unwrap();
    other.sync(&backends(&["b3"])).await.unwrap();

    let mut home = BTreeMap::new();
    for source in &sources {
        let (name, peer) = lab.connect(source).await;
        assert_eq!(
            &peer, source,
            "without masquerade the backend sees the client"
        );
        for _ in 0..2 {
            assert_eq!(
                lab.connect(source).await.0,
                name,
                "{source} changed backend"
            );
        }
        home.insert(source.clone(), name);
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "16 clients all hashed to {used:?}");

    let removed = home.values().next().unwrap().clone();
    let rest: Vec<Backend> = all.iter().filter(|b| b.name != removed).cloned().collect();
    lb.sync(&rest).await.unwrap();
    for source in &sources {
        let now = lab.connect(source).await.0;
        if home[source] == removed {
            assert_ne!(now, removed, "{source} still sent to the removed {removed}");
        } else {
            assert_eq!(
                now, home[source],
                "{source} moved though its backend stayed"
            );
        }
    }

    // The other service's table is its own.
    lb.stop().await.unwrap();
    assert_eq!(lb.installed().await.unwrap(), None);
    assert_eq!(
        other.installed().await.unwrap(),
        Some(vec!["10.231.2.4:9000".parse().unwrap()])
    );
    other.stop().await.unwrap();
}

//! Unit tests of `glory services`: flag parsing and what the tables print.

use clap::Parser;
use serde_json::json;

use super::*;
use crate::table::has_raw_epoch_ms;

#[derive(Parser)]
struct Services {
    #[command(subcommand)]
    action: ServicesAction,
}

/// The spec `glory services ARGS` would send (flags only, no file).
fn spec(args: &[&str]) -> anyhow::Result<Value> {
    let parsed = Services::try_parse_from(std::iter::once("services").chain(args.iter().copied()))?;
    match parsed.action {
        ServicesAction::Create(a) => spec_from_flags(&a),
        _ => bail!("not create"),
    }
}

fn err(r: anyhow::Result<Value>) -> String {
    format!("{:#}", r.expect_err("an error"))
}

#[test]
fn health_flags_become_kind_and_path() {
    assert_eq!(parse_health("tcp").unwrap(), json!({"kind": "tcp"}));
    assert_eq!(
        parse_health("http").unwrap(),
        json!({"kind": "http", "path": "/"})
    );
    assert_eq!(
        parse_health("http:/healthz?deep=1").unwrap(),
        json!({"kind": "http", "path": "/healthz?deep=1"})
    );
    assert_eq!(
        parse_health("exec:check.sh --quick").unwrap(),
        json!({"kind": "exec", "path": "check.sh --quick"})
    );
    for (bad, says) in [
        ("udp", "use tcp, http"),
        ("tcp:/x", "a tcp check has no path"),
        ("http:healthz", "starts with '/'"),
        ("http:/a b", "no spaces"),
        ("exec", "give the command"),
        ("exec:  ", "give the command"),
    ] {
        let e = parse_health(bad).unwrap_err().to_string();
        assert!(e.starts_with(&format!("--health {bad}")), "{e}");
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn instance_counts_from_one_flag_or_three_with_defaults() {
    let i = |min, desired, max| json!({"min": min, "desired": desired, "max": max});
    assert_eq!(
        parse_instances(Some("2:3:10"), None, None, None).unwrap(),
        i(2, 3, 10)
    );
    assert_eq!(
        parse_instances(Some("0:0:1"), None, None, None).unwrap(),
        i(0, 0, 1)
    );
    assert_eq!(parse_instances(None, None, None, None).unwrap(), i(1, 1, 1));
    assert_eq!(
        parse_instances(None, None, Some(3), None).unwrap(),
        i(1, 3, 3)
    );
    assert_eq!(
        parse_instances(None, Some(2), None, None).unwrap(),
        i(2, 2, 2)
    );
    assert_eq!(
        parse_instances(None, None, None, Some(10)).unwrap(),
        i(1, 1, 10)
    );
    assert_eq!(
        parse_instances(None, None, Some(0), None).unwrap(),
        i(0, 0, 1)
    );
    assert_eq!(
        parse_instances(None, Some(2), Some(4), Some(8)).unwrap(),
        i(2, 4, 8)
    );
    for (spec, says) in [
        ("2:3", "write it as MIN:DESIRED:MAX"),
        ("2:3:10:4", "write it as MIN:DESIRED:MAX"),
        ("a:3:10", "write it as MIN:DESIRED:MAX"),
        ("-1:3:10", "write it as MIN:DESIRED:MAX"),
        ("5:3:10", "MIN 5 is above DESIRED 3"),
        ("1:11:10", "DESIRED 11 is above MAX 10"),
        ("0:0:0", "MAX must be at least 1"),
    ] {
        let e = parse_instances(Some(spec), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("--instances {spec}: ")), "{e}");
        assert!(e.contains(says), "{spec}: {e}");
    }
    let e = parse_instances(None, Some(5), Some(3), None).unwrap_err();
    assert_eq!(e.to_string(), "--min 5 is above --desired 3");
    let e = parse_instances(None, None, Some(4), Some(3)).unwrap_err();
    assert_eq!(e.to_string(), "--desired 4 is above --max 3");
}

#[test]
fn env_pairs_need_a_name_and_an_equals_sign() {
    let env = parse_env(&["LANG=C.UTF-8".into(), "OPTS=a=b".into(), "EMPTY=".into()]).unwrap();
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(env["OPTS"], "a=b");
    assert_eq!(env["EMPTY"], "");
    let e = parse_env(&["LANG".into()]).unwrap_err().to_string();
    assert_eq!(e, "--env LANG: write it as NAME=VALUE");
    assert!(parse_env(&["=x".into()]).is_err());
    let e = parse_env(&["A=1".into(), "A=2".into()])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--env A: given twice");
}

#[test]
fn a_full_create_line_becomes_the_spec_the_api_takes() {
    let got = spec(&[
        "create",
        "web",
        "--pool",
        "p1",
        "--health",
        "http:/",
        "--interval",
        "10",
        "--instances",
        "2:3:10",
        "--env",
        "LANG=C.UTF-8",
        "--scale-on",
        "cpu.percent",
        "--target",
        "60",
        "--balancer",
        "127.0.0.1:8080",
        "--driver",
        "nftables",
        "--",
        "python3",
        "-m",
        "http.server",
        "{port}",
    ])
    .unwrap();
    assert_eq!(
        got,
        json!({"name": "web", "pool": "p1",
            "command": ["python3", "-m", "http.server", "{port}"],
            "env": {"LANG": "C.UTF-8"}, "port": 0,
            "health": {"kind": "http", "path": "/", "interval_seconds": 10},
            "instances": {"min": 2, "desired": 3, "max": 10},
            "scaling": {"metric": "cpu.percent", "target": 60.0},
            "balancer": {"listen": "127.0.0.1:8080", "algorithm": "roundrobin",
                         "driver": "nftables"}})
    );
    // The smallest: one instance, a TCP check, the command as one string.
    let got = spec(&[
        "create",
        "db",
        "--pool",
        "p1",
        "--port",
        "5432",
        "--command",
        "pg --data '/srv/my db'",
    ])
    .unwrap();
    assert_eq!(got["command"], json!(["pg", "--data", "/srv/my db"]));
    assert_eq!(got["health"], json!({"kind": "tcp"}));
    assert_eq!(got["instances"], json!({"min": 1, "desired": 1, "max": 1}));
    assert_eq!(got["port"], 5432);
    assert!(got.get("scaling").is_none() && got.get("balancer").is_none());
}

#[test]
fn bad_create_lines_name_the_flag() {
    let base = ["create", "web", "--pool", "p1"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        spec(&args)
    };
    assert!(err(with(&[])).contains("give the command"));
    assert!(err(with(&["--command", "a", "--", "b"])).contains("not both"));
    assert!(err(with(&["--command", "a 'b"])).contains("unbalanced"));
    assert!(err(with(&["--balancer", "8080", "--", "x"])).contains("--balancer 8080"));
    assert!(err(with(&["--balancer", "1.2.3.4:0", "--", "x"])).contains("fixed port"));
    assert!(err(with(&["--scale-on", "cpu.percent", "--", "x"])).contains("--target"));
    assert!(err(with(&["--target", "60", "--", "x"])).contains("--scale-on"));
    assert!(err(with(&["--scale-on", "m", "--target", "0", "--", "x"])).contains("--target 0"));
    assert!(err(with(&["--driver", "haproxy", "--", "x"])).contains("--balancer"));
    assert!(err(with(&["--driver", "f5", "--balancer", "1.2.3.4:80"])).contains("--driver"));
    assert!(err(with(&["--port", "70000", "--", "x"])).contains("--port"));
    assert!(err(with(&["--instances", "1:2:3", "--max", "4"])).contains("--max"));
    // --file replaces the flags; NAME and --pool are needed without it.
    assert!(err(spec(&["create", "--file", "s.json", "--pool", "p1"])).contains("--pool"));
    assert!(err(spec(&["create", "web", "--", "x"])).contains("--pool"));
}

#[test]
fn a_spec_file_gets_its_name_from_the_argument_when_it_has_none() {
    let text = r#"{"pool": "p1", "command": ["x"], "health": {"kind": "tcp"},
                   "instances": {"min": 1, "max": 1, "desired": 1}}"#;
    let v = spec_from_json(text, "s.json", Some("web")).unwrap();
    assert_eq!(v["name"], "web");
    let named = text.replacen('{', r#"{"name": "api", "#, 1);
    assert_eq!(
        spec_from_json(&named, "s.json", None).unwrap()["name"],
        "api"
    );
    let e = spec_from_json(&named, "s.json", Some("web")).unwrap_err();
    assert!(e.to_string().contains("names the service \"api\""), "{e}");
    let e = spec_from_json(text, "s.json", None).unwrap_err();
    assert!(e.to_string().contains("no \"name\""), "{e}");
    let e = spec_from_json("[1]", "s.json", None).unwrap_err();
    assert!(e.to_string().contains("a JSON object"), "{e}");
    assert!(spec_from_json("{", "s.json", None).is_err());
}

fn view(patch: Value) -> Value {
    let mut v = json!({"name": "web", "pool": "p1", "tenant": "alpha",
        "spec": {"command": ["python3", "-m", "http.server", "{port}"], "port": 0,
                 "env": {"LANG": "C"},
                 "health": {"kind": "http", "path": "/", "interval_seconds": 5,
                            "timeout_seconds": 2, "failures": 3},
                 "instances": {"min": 2, "max": 10, "desired": 3},
                 "scaling": {"metric": "cpu.percent", "target": 60.0,
                             "scale_down_window_seconds": 300}},
        "desired": 3, "stopped": false, "healthy": 3, "starting": 0, "unhealthy": 0,
        "stopping": 0, "restarting": null,
        "balancer": {"listen": "127.0.0.1:8080", "algorithm": "roundrobin",
                     "driver": "haproxy", "serving": 3, "error": null,
                     "requests_per_sec": 12.5},
        "created_ms": glory_protocol::now_ms() - 180_000});
    for (k, x) in patch.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    v
}

#[test]
fn the_state_column_says_the_worst_first() {
    assert_eq!(service_state(&view(json!({}))), "ok");
    assert_eq!(
        service_state(&view(json!({"healthy": 2, "unhealthy": 1}))),
        "degraded"
    );
    assert_eq!(
        service_state(&view(json!({"healthy": 0, "starting": 3}))),
        "starting"
    );
    assert_eq!(
        service_state(&view(json!({"healthy": 0, "unhealthy": 3}))),
        "down"
    );
    assert_eq!(
        service_state(&view(json!({"stopped": true, "healthy": 0}))),
        "stopped"
    );
    assert_eq!(
        service_state(&view(json!({"healthy": 0, "starting": 0}))),
        "starting"
    );
    let restarting = view(json!({"restarting": {"since": 1, "pending": ["web-1", "web-2"]}}));
    assert_eq!(service_state(&restarting), "restarting (2 pending)");
    let text = service_text(&restarting, &[]);
    assert!(
        text.contains("pending web-1,web-2\n") && text.contains("no instances"),
        "{text}"
    );
    let mut failing = view(json!({}));
    failing["balancer"]["error"] = json!("haproxy: not installed");
    assert_eq!(service_state(&failing), "balancer-failing");
}

#[test]
fn tables_and_show_read_well() {
    let past = glory_protocol::now_ms() - 180_000;
    let list = json!({"items": [view(json!({})),
                                view(json!({"name": "db", "balancer": null}))]});
    let text = services_table(&list);
    assert!(
        text.starts_with("NAME  POOL  DESIRED  HEALTHY  STARTING  UNHEALTHY  BALANCER"),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:8080 haproxy  ok"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("db ") && l.contains(" -  ")),
        "{text}"
    );

    let instances = [
        json!({"id": "web-1", "node": "n-1", "address": "10.0.0.1", "port": 41000,
               "state": "healthy", "reason": "", "since": past, "restarts": 0}),
        json!({"id": "web-2", "node": "n-2", "address": null, "port": null,
               "state": "starting", "reason": "placed", "since": past, "restarts": 2}),
    ];
    let text = service_text(&view(json!({})), &instances);
    assert!(!has_raw_epoch_ms(&text), "{text}");
    assert!(
        text.contains("command    python3 -m http.server {port}\n"),
        "{text}"
    );
    assert_eq!(
        command_line(&["sh".into(), "-c".into(), "echo a b".into()]),
        "sh -c 'echo a b'"
    );
    assert!(text.contains("health     http / every 5s"), "{text}");
    assert!(
        text.contains("desired 3 (min 2, max 10): 3 healthy"),
        "{text}"
    );
    assert!(text.contains("cpu.percent at 60 per instance"), "{text}");
    assert!(text.contains("3 serving, 12.5 req/s"), "{text}");
    assert!(text.contains("10.0.0.1:41000  healthy   3m ago"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("web-2  n-2   -  ") && l.ends_with("placed")),
        "{text}"
    );

    let decisions = [
        json!({"at": past, "metric": "cpu.percent", "value": 90.0,
                            "current": 4, "desired": 6, "reason": "ratio 1.50"}),
        json!({"at": past, "metric": "cpu.percent", "value": null,
                            "current": 6, "desired": 6, "reason": "no metric: hold"}),
    ];
    let text = decisions_table(&decisions);
    assert!(!has_raw_epoch_ms(&text), "{text}");
    assert!(
        text.contains("3m ago  cpu.percent  90     4        6        ratio 1.50"),
        "{text}"
    );
    assert!(text.contains("-      6"), "{text}");
}

#[test]
fn logs_are_prefixed_with_the_instance() {
    let r = json!({"items": [
        {"instance": "web-1", "node": "n-1", "state": "healthy", "lines": ["a", "b"]},
        {"instance": "web-12", "node": "n-2", "state": "healthy", "lines": ["c"]},
        {"instance": "web-3", "node": "n-3", "state": "starting", "lines": []}]});
    assert_eq!(logs_text(&r), "web-1  | a\nweb-1  | b\nweb-12 | c\n");
    assert_eq!(logs_text(&json!({"items": []})), "");
}

/// Every subcommand against a whole cluster in this process (simulated nodes: the
/// instances never run, but every request and answer is the API's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_is_answered_by_the_api() -> anyhow::Result<()> {
    use crate::up::{Up, UpOptions};
    let dir = tempfile::tempdir()?;
    let up = Up::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: 3,
        groups: 1,
        api_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let api = ApiClient::new(&format!("http://{}", up.api_addr), &up.operator_token)?;
    let result = drive(&api).await;
    up.shutdown().await;
    result
}

async fn drive(api: &ApiClient) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = api.get("/api/v1/cluster").await?;
        if c["nodes_by_state"]["up"] == 3 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "3 nodes up within 30 s; the cluster says {c}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": "t"})))
        .await?;
    api.call(
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "p1", "tenant": "t", "component": "custom:web", "size": 3})),
    )
    .await?;
    let run = |args: &'static [&'static str]| async move {
        let parsed =
            Services::try_parse_from(std::iter::once("services").chain(args.iter().copied()))?;
        services(api, parsed.action, false).await
    };
    run(&[
        "create",
        "web",
        "--pool",
        "p1",
        "--health",
        "http:/",
        "--instances",
        "1:2:3",
        "--env",
        "LANG=C",
        "--scale-on",
        "cpu.percent",
        "--target",
        "60",
        "--",
        "python3",
        "-m",
        "http.server",
        "{port}",
    ])
    .await?;
    let v = api.get("/api/v1/services/web").await?;
    assert_eq!(
        v["spec"]["instances"],
        json!({"min": 1, "desired": 2, "max": 3}),
        "{v}"
    );
    assert_eq!(v["spec"]["env"], json!({"LANG": "C"}), "{v}");
    run(&["list"]).await?;
    run(&["show", "web"]).await?;
    run(&["scale", "web", "3"]).await?;
    assert_eq!(api.get("/api/v1/services/web").await?["desired"], 3);
    let e = run(&["scale", "web", "9"]).await.unwrap_err().to_string();
    assert!(e.contains("desired"), "{e}");
    run(&["stop", "web"]).await?;
    assert_eq!(api.get("/api/v1/services/web").await?["stopped"], true);
    run(&["start", "web"]).await?;
    assert_eq!(api.get("/api/v1/services/web").await?["stopped"], false);
    run(&["restart", "web"]).await?;
    run(&["logs", "web"]).await?;
    run(&["scaling", "web"]).await?;
    run(&["rm", "web"]).await?;
    let e = run(&["show", "web"]).await.unwrap_err().to_string();
    assert!(e.contains("404"), "{e}");
    // A bad spec is refused by the API, which names the field.
    let e = run(&["create", "Bad!", "--pool", "p1", "--", "x"])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("400") && e.contains("name"), "{e}");
    Ok(())
}

#[test]
fn the_flags_are_consistent_and_documented() {
    use clap::CommandFactory;
    let mut cmd = Services::command();
    cmd.build();
    cmd.clone().debug_assert();
    let create = cmd.find_subcommand_mut("create").expect("create");
    let help = create.render_long_help().to_string();
    for flag in [
        "--instances <MIN:DESIRED:MAX>",
        "--health <CHECK>",
        "--file <PATH>",
        "[PROGRAM AND ARGS]...",
    ] {
        assert!(help.contains(flag), "{flag}:\n{help}");
    }
}

//! The QEMU driver: a lab VM's QMP monitor on a unix socket.
//!
//! The VM is started with `-qmp unix:PATH,server=on,wait=off -no-shutdown`, so that a
//! guest that powers itself off stays a stopped process instead of exiting. Each call
//! opens the socket, reads QEMU's greeting, sends `qmp_capabilities`, then its commands,
//! one JSON object a line; asynchronous events (`{"event": ...}`) between the answers
//! are skipped. QEMU serves one QMP client at a time, so the connection is closed as
//! soon as the call is done.
//!
//! Power, as a BMC would see it (`query-status`): `running` (and `suspended`, a guest
//! asleep in S3) is on; `paused`, `shutdown`, `prelaunch` and `guest-panicked` are off
//! (vCPUs halted, nothing on the network); anything else is unknown.
//! - `Off` = `stop`: the vCPUs halt where they are, a VM we powered off is `paused`.
//! - `On` = `system_reset` then `cont`, and only when the VM is not running: the
//!   firmware runs again, so the old RAM content is as good as lost, as after a real
//!   power on.
//! - `Reset` and `Pxe` = `system_reset`, then `cont` when the VM was not running (lab VMs
//!   always boot from the network, so `Pxe` needs no boot override).
//! - `Cycle` = `stop`, `system_reset`, `cont`.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::PowerErrorKind as Kind;
use super::{before_deadline, BmcSettings, PowerAction, PowerError, PowerState};

/// `sun_path` holds 108 bytes, the last one a NUL.
const MAX_SOCKET_PATH: usize = 107;
/// A QMP answer longer than this is not one we asked for.
const MAX_LINE: u64 = 1 << 20;

/// The socket path in a QEMU address (`unix:/path` or `/path`).
fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix:").unwrap_or(address)
}

pub(super) fn validate(settings: &BmcSettings) -> Result<(), String> {
    let path = socket_path(&settings.address);
    if !path.starts_with('/') {
        return Err(format!(
            "the QEMU address {:?} must be the QMP socket's absolute path (unix:/path or /path)",
            settings.address
        ));
    }
    if path.contains(',') {
        return Err(format!(
            "the QEMU address {:?} must be only the socket's path, without chardev options",
            settings.address
        ));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the QMP socket path {path:?} is longer than {MAX_SOCKET_PATH} bytes"
        ));
    }
    if settings.port.is_some() {
        return Err("a QEMU BMC has no port (its address is a unix socket)".into());
    }
    Ok(())
}

/// The power state for a `query-status` status.
fn state_of(status: &str) -> PowerState {
    match status {
        "running" | "suspended" => PowerState::On,
        "paused" | "shutdown" | "prelaunch" | "guest-panicked" => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

/// An open QMP session.
struct Qmp<'a> {
    settings: &'a BmcSettings,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl<'a> Qmp<'a> {
    async fn connect(settings: &'a BmcSettings) -> Result<Qmp<'a>, PowerError> {
        let path = socket_path(&settings.address);
        let stream = UnixStream::connect(path).await;
        let stream = stream.map_err(|e| {
            settings.error(Kind::Unreachable, "connect to QMP", format!("{path}: {e}"))
        })?;
        let (read, writer) = stream.into_split();
        let reader = BufReader::new(read);
        let mut qmp = Qmp {
            settings,
            reader,
            writer,
        };
        let greeting = qmp.read_message("read the QMP greeting").await?;
        if greeting.get("QMP").is_none() {
            let detail = format!("not a QMP greeting: {greeting}");
            return Err(settings.error(Kind::Protocol, "read the QMP greeting", detail));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// The next JSON object from QEMU.
    async fn read_message(&mut self, operation: &str) -> Result<Value, PowerError> {
        let fail = |kind, detail: String| self.settings.error(kind, operation, detail);
        let mut line = String::new();
        match (&mut self.reader).take(MAX_LINE).read_line(&mut line).await {
            Err(e) => return Err(fail(Kind::Unreachable, format!("read: {e}"))),
            Ok(0) => return Err(fail(Kind::Unreachable, "QEMU closed the connection".into())),
            Ok(_) if !line.ends_with('\n') => {
                return Err(fail(
                    Kind::Protocol,
                    format!("an answer over {MAX_LINE} bytes"),
                ))
            }
            Ok(_) => {}
        }
        serde_json::from_str(&line).map_err(|e| {
            let start: String = line.chars().take(200).collect();
            fail(Kind::Protocol, format!("not JSON ({e}): {start}"))
        })
    }

    /// Sends one command and returns its `return` value; events in between are skipped.
    async fn execute(&mut self, command: &str) -> Result<Value, PowerError> {
        let operation = format!("QMP {command}");
        let request = format!("{}\n", json!({ "execute": command }));
        if let Err(e) = self.writer.write_all(request.as_bytes()).await {
            return Err(self
                .settings
                .error(Kind::Unreachable, operation, format!("write: {e}")));
        }
        loop {
            let mut message = self.read_message(&operation).await?;
            if let Some(answer) = message.get_mut("return") {
                return Ok(answer.take());
            }
            let fail = |kind, detail: String| self.settings.error(kind, &operation, detail);
            if let Some(error) = message.get("error") {
                let text = |key| error.get(key).and_then(Value::as_str).unwrap_or("?");
                return Err(fail(
                    Kind::Refused,
                    format!("{}: {}", text("class"), text("desc")),
                ));
            }
            if message.get("event").is_none() {
                return Err(fail(
                    Kind::Protocol,
                    format!("unexpected message: {message}"),
                ));
            }
        }
    }

    async fn power(&mut self) -> Result<PowerState, PowerError> {
        let answer = self.execute("query-status").await?;
        match answer.get("status").and_then(Value::as_str) {
            Some(status) => Ok(state_of(status)),
            None => {
                let detail = format!("no status in {answer}");
                Err(self
                    .settings
                    .error(Kind::Protocol, "QMP query-status", detail))
            }
        }
    }
}

/// The QMP commands that carry out `action` on a VM in state `now`.
fn commands(action: PowerAction, now: PowerState) -> &'static [&'static str] {
    let running = now == PowerState::On;
    match action {
        PowerAction::On if running => &[],
        PowerAction::On => &["system_reset", "cont"],
        PowerAction::Off => &["stop"],
        PowerAction::Reset | PowerAction::Pxe if running => &["system_reset"],
        PowerAction::Reset | PowerAction::Pxe => &["system_reset", "cont"],
        PowerAction::Cycle => &["stop", "system_reset", "cont"],
    }
}

pub(super) async fn status(
    settings: &BmcSettings,
    deadline: Instant,
) -> Result<PowerState, PowerError> {
    let read = async { Qmp::connect(settings).await?.power().await };
    before_deadline(settings, "QMP query-status", deadline, read).await
}

pub(super) async fn act(
    settings: &BmcSettings,
    action: PowerAction,
    deadline: Instant,
) -> Result<(), PowerError> {
    let run = async {
        let mut qmp = Qmp::connect(settings).await?;
        let now = qmp.power().await?;
        for command in commands(action, now) {
            qmp.execute(command).await?;
        }
        Ok(())
    };
    before_deadline(settings, &format!("QMP power {action:?}"), deadline, run).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::{execute, status as power_status, Driver};
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::UnixListener;

    /// A fake VM's run state and the QMP commands it received.
    type Vm = Arc<Mutex<(String, Vec<String>)>>;

    /// Answers one QMP client as QEMU would, with an event before every answer.
    async fn serve(stream: UnixStream, vm: Vm) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = json!({"QMP": {"version": {}, "capabilities": []}});
        write
            .write_all(format!("{greeting}\n").as_bytes())
            .await
            .ok();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap_or_default();
            let command = request["execute"].as_str().unwrap_or("").to_string();
            let answer = {
                let mut vm = vm.lock().expect("lock");
                vm.1.push(command.clone());
                match command.as_str() {
                    "query-status" => {
                        json!({"return": {"status": vm.0, "running": vm.0 == "running"}})
                    }
                    "stop" | "cont" => {
                        vm.0 = if command == "stop" {
                            "paused"
                        } else {
                            "running"
                        }
                        .into();
                        json!({"return": {}})
                    }
                    "system_reset" | "qmp_capabilities" => json!({"return": {}}),
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "no such command"}}),
                }
            };
            let reply = format!("{}\n{answer}\n", json!({"event": "RESET", "data": {}}));
            write.write_all(reply.as_bytes()).await.ok();
        }
    }

    fn fake_qemu(path: &Path, state: &str) -> Vm {
        let vm: Vm = Arc::new(Mutex::new((state.to_string(), Vec::new())));
        let listener = UnixListener::bind(path).expect("bind the fake QMP socket");
        let shared = vm.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        vm
    }

    fn settings(address: &str) -> BmcSettings {
        BmcSettings {
            driver: Driver::Qemu,
            address: address.into(),
            port: None,
            user: None,
            password: None,
            system_id: None,
            insecure_tls: false,
        }
    }

    #[tokio::test]
    async fn a_fake_vm_is_powered_on_and_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let vm = fake_qemu(&path, "paused");
        let s = settings(&format!("unix:{}", path.display()));
        let t = Duration::from_secs(5);
        let sent = || std::mem::take(&mut vm.lock().expect("lock").1);
        assert_eq!(power_status(&s, t).await.expect("status"), PowerState::Off);
        sent();
        assert_eq!(
            execute(&s, PowerAction::On, t).await.expect("on"),
            PowerState::On
        );
        let hello = ["qmp_capabilities", "query-status"];
        assert_eq!(
            sent(),
            [&hello[..], &["system_reset", "cont"], &hello].concat()
        );
        // On when on sends nothing but the status reads.
        assert_eq!(
            execute(&s, PowerAction::On, t).await.expect("on"),
            PowerState::On
        );
        assert_eq!(sent(), [hello, hello].concat());
        assert_eq!(
            execute(&s, PowerAction::Off, t).await.expect("off"),
            PowerState::Off
        );
        assert_eq!(vm.lock().expect("lock").0, "paused");
        for action in [PowerAction::Reset, PowerAction::Cycle, PowerAction::Pxe] {
            assert_eq!(execute(&s, action, t).await.expect("on"), PowerState::On);
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(&dir.path().join("none.sock").display().to_string());
        let e = power_status(&s, Duration::from_secs(2))
            .await
            .expect_err("no socket");
        assert_eq!(e.kind(), Kind::Unreachable);
        assert!(e.to_string().contains("none.sock"), "{e}");
    }

    #[test]
    fn statuses_commands_and_addresses() {
        assert_eq!(state_of("running"), PowerState::On);
        assert_eq!(state_of("paused"), PowerState::Off);
        assert_eq!(state_of("shutdown"), PowerState::Off);
        assert_eq!(state_of("inmigrate"), PowerState::Unknown);
        assert!(commands(PowerAction::On, PowerState::On).is_empty());
        assert_eq!(
            commands(PowerAction::Pxe, PowerState::Off),
            ["system_reset", "cont"]
        );
        assert_eq!(
            commands(PowerAction::Reset, PowerState::On),
            ["system_reset"]
        );
        assert_eq!(settings("unix:/run/vm1.qmp").validate(), Ok(()));
        assert_eq!(settings("/run/vm1.qmp").validate(), Ok(()));
        let long = format!("/{}", "a".repeat(120));
        for bad in [
            "vm1.qmp",
            "tcp:127.0.0.1:4444",
            "unix:/run/vm1.qmp,server=on",
            &long,
        ] {
            assert!(settings(bad).validate().is_err(), "{bad}");
        }
        let mut with_port = settings("/run/vm1.qmp");
        with_port.port = Some(4444);
        assert!(with_port.validate().is_err());
    }
}

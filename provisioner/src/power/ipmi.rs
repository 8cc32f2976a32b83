//! The IPMI driver: `ipmitool` over IPMI 2.0 LAN (RMCP+, cipher suite 3).
//!
//! Each step runs one `ipmitool -I lanplus -C 3 -H ADDRESS [-p PORT] [-U USER] -E
//! chassis ...` child. The password is passed in the child's environment
//! (`IPMI_PASSWORD`, read because of `-E`), never on its command line, where any local
//! user could read it in `ps`; it is set (empty when there is none) so that `ipmitool`
//! never prompts. The child has no standard input, runs with `LC_ALL=C`, and is killed
//! when the deadline passes (`kill_on_drop`).
//!
//! Status reads "Chassis Power is on|off". Actions (see the parent module for their
//! meaning) read the status first where it matters: `On` sends nothing to a server that
//! is on; `Cycle`, `Reset` and `Pxe` power a server that is off on instead of sending a
//! command that BMCs answer differently in that state. `Pxe` is `chassis bootdev pxe`
//! (the next boot only), then `chassis power cycle` or `on`.
//!
//! `ipmitool` says the same ("Unable to establish IPMI v2 / RMCP+ session") for an
//! unreachable BMC and for a wrong user or password: both are
//! [`Kind::Unreachable`], with `ipmitool`'s words in the message.

use std::process::Stdio;

use tokio::process::Command;
use tokio::time::Instant;

use super::PowerErrorKind as Kind;
use super::{before_deadline, BmcSettings, PowerAction, PowerError, PowerState};

/// The program run; found through `PATH` (Debian package `ipmitool`).
const PROGRAM: &str = "ipmitool";
/// IPMI 2.0 limits: user names of 16 bytes, passwords of 20.
const MAX_USER: usize = 16;
const MAX_PASSWORD: usize = 20;

pub(super) fn validate(settings: &BmcSettings) -> Result<(), String> {
    let address = &settings.address;
    if address.starts_with('-') {
        return Err(format!(
            "the IPMI address {address:?} must not start with '-'"
        ));
    }
    if address.contains('/') {
        return Err(format!(
            "the IPMI address {address:?} must be a host name or an IP address (no scheme, no path)"
        ));
    }
    if let Some(user) = &settings.user {
        if user.is_empty() {
            return Err("the IPMI user is empty (leave it out to log in anonymously)".into());
        }
        if user.len() > MAX_USER {
            return Err(format!(
                "the IPMI user {user:?} is longer than {MAX_USER} bytes"
            ));
        }
    }
    if settings
        .password
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PASSWORD)
    {
        return Err(format!(
            "the IPMI password is longer than {MAX_PASSWORD} bytes"
        ));
    }
    Ok(())
}

/// The arguments of `ipmitool` (after the program name) for a `chassis` command: the
/// password is not among them.
fn argv(settings: &BmcSettings, command: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-I", "lanplus", "-C", "3", "-H"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(settings.address.clone());
    if let Some(port) = settings.port {
        args.push("-p".into());
        args.push(port.to_string());
    }
    if let Some(user) = &settings.user {
        args.push("-U".into());
        args.push(user.clone());
    }
    args.push("-E".into());
    args.push("chassis".into());
    args.extend(command.iter().map(|s| s.to_string()));
    args
}

/// Runs `ipmitool ... chassis COMMAND` until the deadline; its standard output.
async fn run(
    settings: &BmcSettings,
    command: &[&str],
    deadline: Instant,
) -> Result<String, PowerError> {
    let operation = format!("ipmitool chassis {}", command.join(" "));
    let fail = |kind, detail: String| settings.error(kind, &operation, detail);
    let mut child = Command::new(PROGRAM);
    child.args(argv(settings, command));
    child.env("IPMI_PASSWORD", settings.password.as_deref().unwrap_or(""));
    child
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = child.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail(
            Kind::Tool,
            format!("no {PROGRAM} (Debian package ipmitool)"),
        ),
        _ => fail(Kind::Tool, format!("start {PROGRAM}: {e}")),
    })?;
    // Dropping the child at the deadline kills it (kill_on_drop).
    let wait = async {
        let output = child.wait_with_output().await;
        output.map_err(|e| fail(Kind::Tool, format!("wait for {PROGRAM}: {e}")))
    };
    let output = before_deadline(settings, &operation, deadline, wait).await?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = one_line(&stderr);
    let status = output.status;
    Err(match () {
        _ if stderr.contains("Unable to establish") => fail(
            Kind::Unreachable,
            format!("no IPMI session (BMC unreachable, or wrong user or password): {said}"),
        ),
        _ if said.is_empty() => fail(Kind::Refused, format!("{PROGRAM} failed ({status})")),
        _ => fail(
            Kind::Refused,
            format!("{PROGRAM} failed ({status}): {said}"),
        ),
    })
}

/// A tool's message on one line, at most 300 characters.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().take(300).collect()
}

/// The state in `chassis power status` output ("Chassis Power is on").
fn parse_status(stdout: &str) -> Option<PowerState> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("Chassis Power is ")?;
        match rest.trim().to_ascii_lowercase().as_str() {
            "on" => Some(PowerState::On),
            "off" => Some(PowerState::Off),
            _ => Some(PowerState::Unknown),
        }
    })
}

pub(super) async fn status(
    settings: &BmcSettings,
    deadline: Instant,
) -> Result<PowerState, PowerError> {
    let out = run(settings, &["power", "status"], deadline).await?;
    let unclear = || {
        let detail = format!("no \"Chassis Power is on|off\" in: {}", one_line(&out));
        settings.error(Kind::Protocol, "ipmitool chassis power status", detail)
    };
    parse_status(&out).ok_or_else(unclear)
}

/// The `chassis` commands that carry out `action` when the server is in state `now`.
fn commands(action: PowerAction, now: PowerState) -> Vec<&'static [&'static str]> {
    let running = now == PowerState::On;
    match action {
        PowerAction::On if running => vec![],
        PowerAction::On => vec![&["power", "on"]],
        PowerAction::Off => vec![&["power", "off"]],
        PowerAction::Cycle if running => vec![&["power", "cycle"]],
        PowerAction::Reset if running => vec![&["power", "reset"]],
        PowerAction::Cycle | PowerAction::Reset => vec![&["power", "on"]],
        PowerAction::Pxe if running => vec![&["bootdev", "pxe"], &["power", "cycle"]],
        PowerAction::Pxe => vec![&["bootdev", "pxe"], &["power", "on"]],
    }
}

pub(super) async fn act(
    settings: &BmcSettings,
    action: PowerAction,
    deadline: Instant,
) -> Result<(), PowerError> {
    let now = match action {
        // Off is the same command in every state: no need to ask first.
        PowerAction::Off => PowerState::Unknown,
        _ => status(settings, deadline).await?,
    };
    for command in commands(action, now) {
        run(settings, command, deadline).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::Driver;

    fn settings() -> BmcSettings {
        BmcSettings {
            driver: Driver::Ipmi,
            address: "10.1.2.3".into(),
            port: Some(6230),
            user: Some("admin".into()),
            password: Some("s3cret-pw".into()),
            system_id: None,
            insecure_tls: false,
        }
    }

    #[test]
    fn the_command_line_is_exact_and_holds_no_password() {
        let args = argv(&settings(), &["power", "on"]);
        assert_eq!(
            args,
            [
                "-I", "lanplus", "-C", "3", "-H", "10.1.2.3", "-p", "6230", "-U", "admin", "-E",
                "chassis", "power", "on"
            ]
        );
        assert!(args.iter().all(|a| !a.contains("s3cret")), "{args:?}");
        let bare = BmcSettings {
            port: None,
            user: None,
            ..settings()
        };
        assert_eq!(
            argv(&bare, &["bootdev", "pxe"]),
            ["-I", "lanplus", "-C", "3", "-H", "10.1.2.3", "-E", "chassis", "bootdev", "pxe"]
        );
    }

    #[test]
    fn status_output_is_parsed() {
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(
            parse_status("warning: x\n  Chassis Power is Off \n"),
            Some(PowerState::Off)
        );
        assert_eq!(
            parse_status("Chassis Power is sideways"),
            Some(PowerState::Unknown)
        );
        assert_eq!(parse_status("Chassis Power Control: Up/On"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn actions_depend_on_the_state() {
        use PowerAction::*;
        use PowerState::{Off as Down, On as Up};
        let on: &[&str] = &["power", "on"];
        assert!(commands(On, Up).is_empty());
        assert_eq!(commands(On, Down), [on]);
        assert_eq!(commands(Off, PowerState::Unknown), [&["power", "off"][..]]);
        assert_eq!(commands(Cycle, Up), [&["power", "cycle"][..]]);
        assert_eq!(commands(Cycle, Down), [on]);
        assert_eq!(commands(Reset, Up), [&["power", "reset"][..]]);
        assert_eq!(commands(Reset, Down), [on]);
        assert_eq!(
            commands(Pxe, Up),
            [&["bootdev", "pxe"][..], &["power", "cycle"][..]]
        );
        assert_eq!(commands(Pxe, Down), [&["bootdev", "pxe"][..], on]);
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(settings().validate(), Ok(()));
        let with = |f: fn(&mut BmcSettings)| {
            let mut s = settings();
            f(&mut s);
            s.validate()
        };
        assert!(with(|s| s.address = "-oBad".into()).is_err());
        assert!(with(|s| s.address = "https://bmc".into()).is_err());
        assert!(with(|s| s.user = Some(String::new())).is_err());
        assert!(with(|s| s.user = Some("u".repeat(17))).is_err());
        let long_password = with(|s| s.password = Some("p".repeat(21)));
        assert!(
            long_password.as_ref().is_err_and(|e| !e.contains("ppp")),
            "{long_password:?}"
        );
        assert_eq!(with(|s| s.address = "fe80::1".into()), Ok(()));
        assert_eq!(with(|s| s.user = None), Ok(()));
    }

    #[test]
    fn tool_messages_fit_on_one_line() {
        assert_eq!(
            one_line("Error: Unable\n  to establish\n"),
            "Error: Unable to establish"
        );
        assert_eq!(one_line(&"x".repeat(1000)).len(), 300);
    }
}

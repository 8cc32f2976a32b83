//! Remote power control of servers through their BMC: IPMI (`ipmitool`), Redfish (HTTP)
//! and QEMU lab VMs (QMP on a unix socket).
//!
//! The API is two calls, [`status`] and [`execute`], over a [`BmcSettings`]. Every call
//! validates the settings first ([`BmcSettings::validate`]), sends nothing when they are
//! wrong, and finishes within the `timeout` it is given (one deadline for the whole call,
//! waiting included): the slow parts (an `ipmitool` child, an HTTP request, a socket) are
//! dropped, and a child killed, when the deadline passes.
//!
//! The actions mean the same on every driver, and all but `Off` leave the server on:
//! - `On`: power on; nothing is sent when the server is already on.
//! - `Off`: hard power off (no graceful shutdown).
//! - `Cycle`: off, then on; a server that is off is simply powered on.
//! - `Reset`: hard reset of a running server; a server that is off is powered on.
//! - `Pxe`: the next boot (once) from the network, then a cycle (IPMI) or a reset
//!   (Redfish, QEMU) of a running server, or power on of a server that is off.
//!
//! BMCs accept a command before they carry it out (a Redfish BMC answers 204 and
//! changes state seconds later), so `execute` then polls the power state until it is
//! the expected one (`Off` after `Off`, `On` after anything else) and returns it. When
//! the deadline passes first, the error is [`PowerErrorKind::NotConfirmed`] with the last
//! state seen: the command was accepted, and repeating it is safe for `On` and `Off`.
//!
//! Errors ([`PowerError`]) name the BMC's address, the driver and what failed; they never
//! contain the password (it is also scrubbed from anything a BMC or a tool says back),
//! and neither does `Debug` of [`BmcSettings`]. The password reaches `ipmitool` through
//! its environment, never its command line.

mod ipmi;
mod qemu;
mod redfish;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use PowerErrorKind as Kind;

/// What to do with a server's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PowerActionName)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    Reset,
    /// Boot from the network once, then power cycle (or power on when off).
    Pxe,
}

/// A server's power as its BMC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    /// The BMC answered with a state that is neither (Redfish `PoweringOn`, a QEMU VM
    /// stopped in a debugger, ...).
    Unknown,
}

/// How the BMC is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = BmcDriver)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// IPMI 2.0 over LAN (RMCP+, cipher suite 3) through `ipmitool`.
    Ipmi,
    /// DMTF Redfish over HTTPS (or HTTP), basic authentication.
    Redfish,
    /// A QEMU VM's QMP monitor on a unix socket (lab and tests).
    Qemu,
}

/// Where a server's BMC is and how to log in to it (fields left out are `None`/`false`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcSettings {
    /// The protocol: `ipmi`, `redfish` or `qemu`.
    pub driver: Driver,
    /// IPMI: the BMC's host name or IP address. Redfish: the same, optionally prefixed
    /// by `https://` (the default) or `http://`. QEMU: the QMP socket's path, optionally
    /// prefixed by `unix:`.
    pub address: String,
    /// The BMC's port; default: IPMI 623/udp, Redfish 443 (https) or 80 (http). None for
    /// QEMU.
    pub port: Option<u16>,
    /// The user to log in as (IPMI: at most 16 bytes). Default: none (anonymous IPMI, no
    /// HTTP authentication).
    pub user: Option<String>,
    /// The password (IPMI: at most 20 bytes). Default: none.
    pub password: Option<String>,
    /// Redfish: the system to control, as an id (`1`, `System.Embedded.1`) or a path
    /// (`/redfish/v1/Systems/1`). Default: the first member of `/redfish/v1/Systems`.
    pub system_id: Option<String>,
    /// Redfish over HTTPS: accept any certificate (BMCs often have self-signed ones).
    /// Default: false (the system's CA certificates decide).
    #[serde(default)]
    pub insecure_tls: bool,
}

impl fmt::Debug for BmcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcSettings")
            .field("driver", &self.driver)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("system_id", &self.system_id)
            .field("insecure_tls", &self.insecure_tls)
            .finish()
    }
}

impl BmcSettings {
    /// Checks the settings without contacting anything; the message says what is wrong
    /// (never with the password in it).
    pub fn validate(&self) -> Result<(), String> {
        if self.address.is_empty() {
            return Err("the BMC address is empty".into());
        }
        let odd = self
            .address
            .chars()
            .find(|c| c.is_whitespace() || c.is_control());
        if let Some(c) = odd {
            return Err(format!(
                "the BMC address {:?} contains {c:?} (no whitespace or control characters)",
                self.address
            ));
        }
        if self.port == Some(0) {
            return Err("the BMC port must be between 1 and 65535".into());
        }
        // They would end up in a header or an environment variable.
        for (what, value) in [("user", &self.user), ("password", &self.password)] {
            if value.as_ref().is_some_and(|v| v.contains(char::is_control)) {
                return Err(format!("the BMC {what} contains control characters"));
            }
        }
        match self.driver {
            Driver::Ipmi => ipmi::validate(self),
            Driver::Redfish => redfish::validate(self),
            Driver::Qemu => qemu::validate(self),
        }
    }
}

/// What went wrong, for callers that branch on it (retry, report, give up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerErrorKind {
    /// The settings are wrong; nothing was sent.
    InvalidSettings,
    /// The BMC could not be reached, or (IPMI) no session opened: a wrong password too.
    Unreachable,
    /// The BMC refused the credentials (Redfish 401 or 403).
    Auth,
    /// The BMC answered the command with an error.
    Refused,
    /// The BMC's answer could not be understood.
    Protocol,
    /// `ipmitool` is missing or could not be run, or the HTTP client could not be set up.
    Tool,
    /// The call did not finish within its timeout.
    Timeout,
    /// The command was accepted, but the expected state was not seen before the timeout.
    NotConfirmed,
}

/// A failed power operation: which BMC, which step, why.
#[derive(Clone, Debug)]
pub struct PowerError {
    kind: PowerErrorKind,
    driver: Driver,
    address: String,
    port: Option<u16>,
    operation: String,
    detail: String,
    /// The last state seen, for [`PowerErrorKind::NotConfirmed`].
    last_state: Option<PowerState>,
}

impl BmcSettings {
    /// An error about this BMC; the password is scrubbed from the text.
    fn error(
        &self,
        kind: Kind,
        operation: impl Into<String>,
        detail: impl Into<String>,
    ) -> PowerError {
        let scrub = |text: String| match self.password.as_deref() {
            Some(p) if !p.is_empty() => text.replace(p, "<redacted>"),
            _ => text,
        };
        PowerError {
            kind,
            driver: self.driver,
            address: scrub(self.address.clone()),
            port: self.port,
            operation: scrub(operation.into()),
            detail: scrub(detail.into()),
            last_state: None,
        }
    }
}

impl PowerError {
    /// What kind of failure this is.
    pub fn kind(&self) -> PowerErrorKind {
        self.kind
    }

    /// The BMC's address, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// For [`PowerErrorKind::NotConfirmed`]: the last power state the BMC reported.
    pub fn last_state(&self) -> Option<PowerState> {
        self.last_state
    }
}

impl fmt::Display for PowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let driver = format!("{:?}", self.driver).to_lowercase();
        let port = self.port.map(|p| format!(" port {p}")).unwrap_or_default();
        let (address, operation, detail) = (&self.address, &self.operation, &self.detail);
        write!(f, "BMC {address}{port} ({driver}): {operation}: {detail}")
    }
}

impl std::error::Error for PowerError {}

/// Time between two reads of the power state while waiting for a change.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Carries out `action` on the server behind `settings`, then waits for the power state
/// to become the expected one and returns it (see the module's documentation). The
/// whole call, waiting included, takes at most `timeout`.
pub async fn execute(
    settings: &BmcSettings,
    action: PowerAction,
    timeout: Duration,
) -> Result<PowerState, PowerError> {
    check(settings)?;
    let deadline = Instant::now() + timeout;
    match settings.driver {
        Driver::Ipmi => ipmi::act(settings, action, deadline).await?,
        Driver::Redfish => redfish::act(settings, action, deadline).await?,
        Driver::Qemu => qemu::act(settings, action, deadline).await?,
    }
    let expected = match action {
        PowerAction::Off => PowerState::Off,
        _ => PowerState::On,
    };
    wait_for_state(settings, expected, action, deadline).await
}

/// Reads the server's power state, within `timeout`.
pub async fn status(settings: &BmcSettings, timeout: Duration) -> Result<PowerState, PowerError> {
    check(settings)?;
    status_until(settings, Instant::now() + timeout).await
}

fn check(settings: &BmcSettings) -> Result<(), PowerError> {
    let invalid = |why| settings.error(Kind::InvalidSettings, "check settings", why);
    settings.validate().map_err(invalid)
}

async fn status_until(settings: &BmcSettings, deadline: Instant) -> Result<PowerState, PowerError> {
    match settings.driver {
        Driver::Ipmi => ipmi::status(settings, deadline).await,
        Driver::Redfish => redfish::status(settings, deadline).await,
        Driver::Qemu => qemu::status(settings, deadline).await,
    }
}

/// Polls the power state until it is `expected`; at the deadline, the error says what
/// was seen last. Used by `execute` and by drivers that must see `Off` before `On`.
async fn wait_for_state(
    settings: &BmcSettings,
    expected: PowerState,
    action: PowerAction,
    deadline: Instant,
) -> Result<PowerState, PowerError> {
    loop {
        // A BMC busy with the change may fail a read: that is not the answer yet.
        let (seen, failure) = match status_until(settings, deadline).await {
            Ok(state) if state == expected => return Ok(state),
            Ok(state) => (state, None),
            Err(e) if matches!(e.kind, Kind::Auth | Kind::Tool) => return Err(e),
            Err(e) => (PowerState::Unknown, Some(e.detail)),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            let mut detail = format!(
                "the BMC took the command, but says {seen:?}, not {expected:?}, at the timeout"
            );
            if let Some(why) = failure {
                detail.push_str(&format!(" (last read failed: {why})"));
            }
            let mut e = settings.error(Kind::NotConfirmed, format!("power {action:?}"), detail);
            e.last_state = Some(seen);
            return Err(e);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `step` until the deadline; past it, a [`PowerErrorKind::Timeout`] error that
/// names `operation`.
async fn before_deadline<T>(
    settings: &BmcSettings,
    operation: &str,
    deadline: Instant,
    step: impl std::future::Future<Output = Result<T, PowerError>>,
) -> Result<T, PowerError> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(result) => result,
        Err(_) => Err(settings.error(Kind::Timeout, operation, "no answer before the timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPMI settings, changed by `change`.
    fn ipmi(change: impl FnOnce(&mut BmcSettings)) -> BmcSettings {
        let mut s = BmcSettings {
            driver: Driver::Ipmi,
            address: "10.0.0.9".into(),
            port: None,
            user: Some("admin".into()),
            password: Some("hunter2-secret".into()),
            system_id: None,
            insecure_tls: false,
        };
        change(&mut s);
        s
    }

    #[test]
    fn settings_are_checked_for_every_driver() {
        assert_eq!(ipmi(|_| ()).validate(), Ok(()));
        let address_ok = |a: &str| ipmi(|s| s.address = a.into()).validate().is_ok();
        assert!(!["", "10.0.0.9 ", "bmc\n1", "bmc\t"]
            .into_iter()
            .any(address_ok));
        assert!(ipmi(|s| s.port = Some(0)).validate().is_err());
        assert_eq!(ipmi(|s| s.port = Some(65535)).validate(), Ok(()));
        let control = ipmi(|s| s.password = Some("a\nb".into())).validate();
        assert!(control.is_err_and(|e| !e.contains("a\nb")));
        let qemu = |address: &str| {
            let mut s = ipmi(|s| s.driver = Driver::Qemu);
            s.address = address.into();
            s.validate()
        };
        assert_eq!(qemu("unix:/run/vm.qmp"), Ok(()));
        assert!(qemu("bmc1").is_err());
    }

    #[test]
    fn errors_name_the_bmc_and_never_the_password() {
        let s = ipmi(|_| ());
        let said = "the tool said: password hunter2-secret rejected";
        let e = s.error(Kind::Refused, "ipmitool chassis power on", said);
        let want = "BMC 10.0.0.9 (ipmi): ipmitool chassis power on: the tool said: password <redacted> rejected";
        assert_eq!(e.to_string(), want);
        assert!(!format!("{e:?}").contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        assert_eq!((e.kind(), e.address()), (Kind::Refused, "10.0.0.9"));
    }

    #[tokio::test]
    async fn invalid_settings_send_nothing() {
        let s = ipmi(|s| s.address = String::new());
        let t = Duration::from_secs(1);
        let read = status(&s, t).await.map_err(|e| e.kind());
        assert_eq!(read, Err(Kind::InvalidSettings));
        let act = execute(&s, PowerAction::On, t).await.map_err(|e| e.kind());
        assert_eq!(act, Err(Kind::InvalidSettings));
    }

    #[test]
    fn settings_and_actions_in_json() {
        let text = r#"{"driver": "redfish", "address": "https://bmc7", "password": "x"}"#;
        let s: BmcSettings = serde_json::from_str(text).expect("parse");
        assert_eq!(s.driver, Driver::Redfish);
        assert_eq!((s.port, s.system_id, s.insecure_tls), (None, None, false));
        let action: PowerAction = serde_json::from_str("\"pxe\"").expect("action");
        assert_eq!(action, PowerAction::Pxe);
        let state = serde_json::to_string(&PowerState::Unknown).expect("state");
        assert_eq!(state, "\"unknown\"");
        let driver = serde_json::to_string(&Driver::Qemu).expect("driver");
        assert_eq!(driver, "\"qemu\"");
    }
}

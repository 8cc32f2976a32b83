//! The Redfish driver: DMTF Redfish over HTTPS (or HTTP), basic authentication.
//!
//! The address is `host`, `https://host` or `http://host` (HTTPS by default; plain HTTP
//! sends the credentials in clear). Certificates are checked against the system's CA
//! certificates unless `insecure_tls` is set.
//!
//! The system is the configured one, else the first member of `/redfish/v1/Systems`.
//! Its resource gives `PowerState` (`On`, `Off`, the rest unknown), the reset action's
//! `target` and, when listed, the accepted `ResetType@Redfish.AllowableValues`. Then
//! `POST {"ResetType": ...}`: `On` unless on; `ForceOff` unless off; `Cycle` is
//! `PowerCycle` or, when not listed, `ForceOff`, a wait until the BMC reports `Off` (a
//! BMC that gets `On` while still on ignores it) and `On`; `Reset` is `ForceRestart`
//! (else as `Cycle`); a system that is not on gets `On` for both. `Pxe` first PATCHes
//! `{"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}`
//! (with `If-Match` when the BMC gave an `ETag`), then does as `Reset`.
//!
//! A BMC answers 204 before it acts (`execute` waits for the state, see the parent
//! module). HTTP 401 and 403 are [`Kind::Auth`], other errors [`Kind::Refused`] with
//! the BMC's own message.

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::PowerErrorKind as Kind;
use super::{before_deadline, wait_for_state, BmcSettings, PowerAction, PowerError, PowerState};

const SYSTEMS: &str = "/redfish/v1/Systems";

/// The scheme and the host of a Redfish address.
fn split_address(address: &str) -> (&str, &str) {
    match address.strip_prefix("http://") {
        Some(host) => ("http", host),
        None => ("https", address.strip_prefix("https://").unwrap_or(address)),
    }
}

/// `scheme://host[:port]`, IPv6 literals in brackets.
fn base_url(settings: &BmcSettings) -> String {
    let (scheme, host) = split_address(&settings.address);
    let host = match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]"),
        false => host.to_string(),
    };
    match settings.port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

pub(super) fn validate(settings: &BmcSettings) -> Result<(), String> {
    let address = &settings.address;
    let (_, host) = split_address(address);
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let literal = literal.unwrap_or(host);
    let not_ipv6 = literal.contains(':') && literal.parse::<std::net::Ipv6Addr>().is_err();
    if host.is_empty() || host.contains(['/', '@', '?', '#', '\\', '%']) || not_ipv6 {
        return Err(format!(
            "the Redfish address {address:?} must be host, https://host or http://host \
             (a host name or an IP address; the port goes in `port`)"
        ));
    }
    if let Some(user) = &settings.user {
        if user.is_empty() || user.contains(':') {
            return Err("the Redfish user must not be empty or contain ':'".into());
        }
    }
    if let Some(id) = &settings.system_id {
        let under = format!("{SYSTEMS}/");
        let tail = id.strip_prefix(&under).unwrap_or(id);
        let odd = |c: char| c.is_whitespace() || c.is_control() || "/?#%\\".contains(c);
        if tail.is_empty() || tail == ".." || tail.contains(odd) {
            let why = format!("the Redfish system {id:?} must be an id or {under}ID");
            return Err(why);
        }
    }
    Ok(())
}

/// The first member's path in a collection.
fn first_member(collection: &Value) -> Option<String> {
    let member = collection.get("Members")?.as_array()?.first()?;
    let path = member.get("@odata.id")?.as_str()?;
    path.starts_with('/').then(|| path.to_string())
}

/// What a system resource says about power.
struct System {
    power: PowerState,
    reset_target: String,
    /// The reset types the BMC accepts, when it says.
    allowed: Option<Vec<String>>,
}

fn parse_system(resource: &Value, path: &str) -> System {
    let reset = resource.pointer("/Actions/#ComputerSystem.Reset");
    let target = reset.and_then(|r| r.get("target")).and_then(Value::as_str);
    let allowed = reset.and_then(|r| r.get("ResetType@Redfish.AllowableValues"));
    let allowed = allowed.and_then(Value::as_array).map(|list| {
        let names = list.iter().filter_map(Value::as_str);
        names.map(str::to_string).collect()
    });
    // A target elsewhere than this BMC is not followed.
    let target = target.filter(|t| t.starts_with('/')).map(str::to_string);
    let default = || {
        format!(
            "{}/Actions/ComputerSystem.Reset",
            path.trim_end_matches('/')
        )
    };
    let reset_target = target.unwrap_or_else(default);
    let power = match resource.get("PowerState").and_then(Value::as_str) {
        Some("On") => PowerState::On,
        Some("Off") => PowerState::Off,
        _ => PowerState::Unknown,
    };
    System {
        power,
        reset_target,
        allowed,
    }
}

/// The BMC's own words in an error body, else the body's start.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let extended = error.and_then(|e| e.pointer("/@Message.ExtendedInfo/0/Message"));
    let message = extended.or_else(|| error.and_then(|e| e.get("message")));
    let text = match message.and_then(Value::as_str) {
        Some(said) => said.to_string(),
        None => body.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    text.chars().take(300).collect()
}

/// One step of an action.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Post(&'static str),
    WaitOff,
    BootPxeOnce,
}

/// The steps that carry out `action` on a system in state `now`.
fn plan(action: PowerAction, now: PowerState, allowed: Option<&[String]>) -> Vec<Step> {
    use Step::*;
    let allows = |t: &str| allowed.is_none_or(|list| list.iter().any(|a| a == t));
    let running = now == PowerState::On;
    let restart = match () {
        _ if !running => vec![Post("On")],
        _ if allows("ForceRestart") => vec![Post("ForceRestart")],
        _ => vec![Post("ForceOff"), WaitOff, Post("On")],
    };
    match action {
        PowerAction::On if running => vec![],
        PowerAction::On => vec![Post("On")],
        PowerAction::Off if now == PowerState::Off => vec![],
        PowerAction::Off => vec![Post("ForceOff")],
        PowerAction::Cycle if running && allows("PowerCycle") => vec![Post("PowerCycle")],
        PowerAction::Cycle if running => vec![Post("ForceOff"), WaitOff, Post("On")],
        PowerAction::Cycle => vec![Post("On")],
        PowerAction::Reset => restart,
        PowerAction::Pxe => [vec![BootPxeOnce], restart].concat(),
    }
}

/// A BMC and an HTTP client for one call.
struct Bmc<'a> {
    settings: &'a BmcSettings,
    client: reqwest::Client,
    base: String,
}

impl<'a> Bmc<'a> {
    fn new(settings: &'a BmcSettings) -> Result<Bmc<'a>, PowerError> {
        let builder = reqwest::Client::builder().danger_accept_invalid_certs(settings.insecure_tls);
        let fail = |e: reqwest::Error| settings.error(Kind::Tool, "set up HTTP", chain(&e));
        let (client, base) = (builder.build().map_err(fail)?, base_url(settings));
        Ok(Bmc {
            settings,
            client,
            base,
        })
    }

    /// Sends a request; the answer's body and `ETag` when it is a success.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<(String, Option<String>), PowerError> {
        let operation = format!("{method} {path}");
        let fail = |kind, detail: String| self.settings.error(kind, &operation, detail);
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(user) = &self.settings.user {
            request = request.basic_auth(user, self.settings.password.as_ref());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(etag) = if_match {
            request = request.header(header::IF_MATCH, etag);
        }
        let answer = request.send().await.map_err(|e| match e.is_timeout() {
            true => fail(Kind::Timeout, chain(&e)),
            false => fail(Kind::Unreachable, chain(&e)),
        })?;
        let status = answer.status();
        let etag = answer.headers().get(header::ETAG);
        let etag = etag.and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = answer.text().await;
        let text = text.map_err(|e| fail(Kind::Unreachable, format!("read: {}", chain(&e))))?;
        match status {
            s if s.is_success() => Ok((text, etag)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let user = self.settings.user.as_deref().unwrap_or("(none)");
                Err(fail(Kind::Auth, format!("HTTP {status}: {user:?} refused")))
            }
            _ => Err(fail(
                Kind::Refused,
                format!("HTTP {status}: {}", error_message(&text)),
            )),
        }
    }

    async fn get(&self, path: &str) -> Result<(Value, Option<String>), PowerError> {
        let (text, etag) = self.send(Method::GET, path, None, None).await?;
        let fail = |e| {
            self.settings
                .error(Kind::Protocol, format!("GET {path}"), format!("{e}"))
        };
        Ok((serde_json::from_str(&text).map_err(fail)?, etag))
    }

    /// The system's path, what it says about power, and its `ETag`.
    async fn system(&self) -> Result<(String, System, Option<String>), PowerError> {
        let path = match &self.settings.system_id {
            Some(id) if id.starts_with('/') => id.clone(),
            Some(id) => format!("{SYSTEMS}/{id}"),
            None => {
                let (systems, _) = self.get(SYSTEMS).await?;
                let none = format!("GET {SYSTEMS}: no system listed");
                let none = || self.settings.error(Kind::Protocol, "find the system", none);
                first_member(&systems).ok_or_else(none)?
            }
        };
        let (resource, etag) = self.get(&path).await?;
        Ok((path.clone(), parse_system(&resource, &path), etag))
    }
}

/// An error and its causes on one line (reqwest's own message is only the first).
fn chain(error: &dyn std::error::Error) -> String {
    let causes = std::iter::successors(error.source(), |e| e.source());
    causes.fold(error.to_string(), |text, cause| format!("{text}: {cause}"))
}

pub(super) async fn status(
    settings: &BmcSettings,
    deadline: Instant,
) -> Result<PowerState, PowerError> {
    let read = async { Ok(Bmc::new(settings)?.system().await?.1.power) };
    before_deadline(settings, "read the Redfish power state", deadline, read).await
}

pub(super) async fn act(
    settings: &BmcSettings,
    action: PowerAction,
    deadline: Instant,
) -> Result<(), PowerError> {
    let operation = format!("Redfish power {action:?}");
    let bmc = Bmc::new(settings)?;
    let (path, system, etag) =
        before_deadline(settings, &operation, deadline, bmc.system()).await?;
    for step in plan(action, system.power, system.allowed.as_deref()) {
        match step {
            Step::Post(reset_type) => {
                let body = json!({ "ResetType": reset_type });
                let post = bmc.send(Method::POST, &system.reset_target, Some(body), None);
                before_deadline(settings, &operation, deadline, post).await?;
            }
            Step::WaitOff => {
                wait_for_state(settings, PowerState::Off, action, deadline).await?;
            }
            Step::BootPxeOnce => {
                let once = "BootSourceOverrideEnabled";
                let body = Some(json!({"Boot": {"BootSourceOverrideTarget": "Pxe", once: "Once"}}));
                let patch = bmc.send(Method::PATCH, &path, body, etag.as_deref());
                before_deadline(settings, &operation, deadline, patch).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(address: &str) -> BmcSettings {
        let s = json!({"driver": "redfish", "address": address, "user": "admin", "password": "pw"});
        serde_json::from_value(s).expect("settings")
    }

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(base_url(&settings("bmc1")), "https://bmc1");
        assert_eq!(base_url(&settings("http://10.0.0.1")), "http://10.0.0.1");
        let mut v6 = settings("fe80::1");
        v6.port = Some(8000);
        assert_eq!(base_url(&v6), "https://[fe80::1]:8000");
        for bad in "https:// ftp://x bmc/redfish user@bmc bmc:8000 http://a?b".split(' ') {
            assert!(settings(bad).validate().is_err(), "{bad}");
        }
        for good in ["bmc1.lab", "https://10.0.0.1", "[fe80::1]", "fe80::1"] {
            assert_eq!(settings(good).validate(), Ok(()), "{good}");
        }
        let system = |id: &str| {
            let mut s = settings("bmc");
            s.system_id = Some(id.into());
            s.validate()
        };
        assert_eq!(system("System.Embedded.1"), Ok(()));
        assert_eq!(system("/redfish/v1/Systems/1"), Ok(()));
        for bad in [
            "/redfish/v1/Managers/1",
            "../x",
            "..",
            "1?x",
            "",
            "/redfish/v1/Systems/",
        ] {
            assert!(system(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_system_resource_is_parsed() {
        let systems = json!({"Members": [{"@odata.id": "/redfish/v1/Systems/abc"}, {}]});
        let first = first_member(&systems);
        assert_eq!(first.as_deref(), Some("/redfish/v1/Systems/abc"));
        assert_eq!(first_member(&json!({"Members": []})), None);
        let target = "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset";
        let allowed = json!(["On", "ForceOff"]);
        let reset = json!({"target": target, "ResetType@Redfish.AllowableValues": allowed});
        let resource = json!({"PowerState": "On", "Actions": {"#ComputerSystem.Reset": reset}});
        let system = parse_system(&resource, "/redfish/v1/Systems/abc");
        let allowed = Some(vec!["On".to_string(), "ForceOff".to_string()]);
        assert_eq!(
            (system.power, system.reset_target.as_str()),
            (PowerState::On, target)
        );
        assert_eq!(system.allowed, allowed);
        let bare = parse_system(&json!({"PowerState": "PoweringOn"}), "/s/1/");
        assert_eq!((bare.power, bare.allowed), (PowerState::Unknown, None));
        assert_eq!(bare.reset_target, "/s/1/Actions/ComputerSystem.Reset");
        let off = parse_system(&json!({"PowerState": "Off"}), "/s");
        assert_eq!(off.power, PowerState::Off);
    }

    #[test]
    fn error_bodies_give_the_bmcs_words() {
        let body = r#"{"error": {"code": "Base.1.0.GeneralError", "message": "No"}}"#;
        assert_eq!(error_message(body), "No");
        let extended =
            json!({"error": {"message": "x", "@Message.ExtendedInfo": [{"Message": "Off"}]}});
        assert_eq!(error_message(&extended.to_string()), "Off");
        let html = error_message("<html>\n Bad\n gateway</html>");
        assert_eq!(html, "<html> Bad gateway</html>");
    }

    #[test]
    fn plans_follow_the_state_and_the_allowed_resets() {
        use PowerAction::*;
        use Step::*;
        let (on, off) = (PowerState::On, PowerState::Off);
        // What sushy-emulator's fake systems allow: no PowerCycle.
        let sushy = "On ForceOff GracefulShutdown GracefulRestart ForceRestart Nmi ForceOn";
        let sushy: Vec<String> = sushy.split(' ').map(String::from).collect();
        let sushy = Some(&sushy[..]);
        let off_on = [Post("ForceOff"), WaitOff, Post("On")];
        assert_eq!(plan(On, on, None), []);
        assert_eq!(plan(On, off, None), [Post("On")]);
        assert_eq!(plan(Off, off, None), []);
        assert_eq!(plan(Off, on, None), [Post("ForceOff")]);
        assert_eq!(plan(Cycle, on, None), [Post("PowerCycle")]);
        assert_eq!(plan(Cycle, on, sushy), off_on);
        assert_eq!(plan(Cycle, off, sushy), [Post("On")]);
        assert_eq!(plan(Reset, on, sushy), [Post("ForceRestart")]);
        let no_restart = ["On".to_string(), "ForceOff".to_string()];
        assert_eq!(plan(Reset, on, Some(&no_restart)), off_on);
        assert_eq!(plan(Reset, PowerState::Unknown, None), [Post("On")]);
        assert_eq!(plan(Pxe, on, sushy), [BootPxeOnce, Post("ForceRestart")]);
        assert_eq!(plan(Pxe, off, None), [BootPxeOnce, Post("On")]);
    }
}

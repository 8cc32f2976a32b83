//! A service as operators describe it, and its validation. Every error names the
//! field (`instances.min`, `health.path`...) so the API answers 400 saying what to fix,
//! and nothing is half-created.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1-63 lower-case letters, digits or '-'.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// The pool whose nodes run the instances (its tenant owns the service).
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub pool: String,
    #[serde(default)]
    #[schema(schema_with = command_schema)]
    pub command: Vec<String>,
    /// A package to install instead of a command (from the provisioner, part 2).
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// 0: the agent picks a free port and reports it.
    #[serde(default)]
    pub port: u16,
    pub health: Health,
    pub instances: Instances,
    #[serde(default)]
    pub scaling: Option<Scaling>,
    #[serde(default)]
    pub balancer: Option<Balancer>,
}

/// Program and arguments (no NUL); `{port}`, `{node}`, `{service}`, `{instance}` and
/// `{pool}` are replaced.
fn command_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^\\u0000]*$")),
        )
        .description(Some(
            "Program and arguments; `{port}`, `{node}`, `{service}`, `{instance}`, `{pool}` \
             are replaced.",
        ))
        .build()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Tcp,
    Http,
    Exec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceHealth)]
pub struct Health {
    pub kind: HealthKind,
    /// The HTTP path (`http`, starting with `/`) or the command (`exec`, split on
    /// spaces); none for `tcp`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_interval")]
    #[schema(minimum = 1, maximum = 3600)]
    pub interval_seconds: u32,
    /// At most interval_seconds.
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: u32,
    /// Failed checks in a row before the instance is unhealthy and replaced.
    #[serde(default = "default_failures")]
    #[schema(minimum = 1, maximum = 100)]
    pub failures: u32,
}

fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    2
}
fn default_failures() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceInstances)]
pub struct Instances {
    #[schema(maximum = 10000)]
    pub min: u32,
    #[schema(minimum = 1, maximum = 10000)]
    pub max: u32,
    /// Between min and max.
    #[schema(maximum = 10000)]
    pub desired: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceScaling)]
pub struct Scaling {
    /// `cpu.percent`, `requests_per_sec`, or a monitor item.
    #[schema(min_length = 1, max_length = 200)]
    pub metric: String,
    /// The value per instance to keep.
    #[schema(exclusive_minimum = 0)]
    pub target: f64,
    #[serde(default = "default_window")]
    #[schema(maximum = 86400)]
    pub scale_down_window_seconds: u32,
}

fn default_window() -> u32 {
    300
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Roundrobin,
    Leastconn,
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancerDriver {
    Haproxy,
    Nftables,
    Ipvs,
    Keepalived,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceBalancer)]
pub struct Balancer {
    /// IP:PORT clients connect to (a fixed port).
    #[schema(value_type = String, pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9][0-9]|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})$")]
    pub listen: SocketAddr,
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    pub driver: BalancerDriver,
}

fn default_algorithm() -> Algorithm {
    Algorithm::Roundrobin
}

/// A field that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
    /// A rule between fields (or of a map's keys) that the API's schema cannot state;
    /// otherwise a value the schema already rules out.
    pub rule: bool,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError {
        field,
        message: message.into(),
        rule: false,
    })
}

/// A rule the schema cannot state: one field against another.
fn rule(field: &'static str, message: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError {
        field,
        message: message.into(),
        rule: true,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ServiceSpec {
    /// Check every field; the first error found.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_name(&self.name) {
            bad(
                "name",
                "1-63 lower-case letters, digits or '-', not at either end",
            )?;
        }
        if self.pool.is_empty() {
            bad("pool", "the pool whose nodes run the instances")?;
        }
        match (self.command.is_empty(), &self.package) {
            (true, None) => rule("command", "give a command or a package")?,
            (false, Some(_)) => rule("package", "give a command or a package, not both")?,
            _ => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            bad("command", "no NUL characters")?;
        }
        for key in self.env.keys() {
            let ok = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                rule(
                    "env",
                    format!("{key:?} is not an environment variable name"),
                )?;
            }
        }
        let h = &self.health;
        if !(1..=3600).contains(&h.interval_seconds) {
            bad("health.interval_seconds", "between 1 and 3600")?;
        }
        if h.timeout_seconds == 0 || h.timeout_seconds > h.interval_seconds {
            rule(
                "health.timeout_seconds",
                "at least 1 and at most interval_seconds",
            )?;
        }
        if !(1..=100).contains(&h.failures) {
            bad("health.failures", "between 1 and 100")?;
        }
        match (h.kind, h.path.as_deref()) {
            (HealthKind::Http, Some(p))
                if !p.starts_with('/')
                    || p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                rule(
                    "health.path",
                    "an HTTP path starting with '/', without spaces",
                )?
            }
            (HealthKind::Exec, None) => rule("health.path", "the command an exec check runs")?,
            (HealthKind::Tcp, Some(_)) => rule("health.path", "a tcp check has no path")?,
            _ => {}
        }
        let i = self.instances;
        if i.min > i.max {
            rule("instances.min", format!("{} is above max {}", i.min, i.max))?;
        }
        if i.max == 0 || i.max > 10_000 {
            bad("instances.max", "between 1 and 10000")?;
        }
        if !(i.min..=i.max).contains(&i.desired) {
            rule(
                "instances.desired",
                format!("between min {} and max {}", i.min, i.max),
            )?;
        }
        if let Some(s) = &self.scaling {
            if s.metric.is_empty() || s.metric.len() > 200 {
                bad(
                    "scaling.metric",
                    "cpu.percent, requests_per_sec or a monitor item",
                )?;
            }
            if !(s.target.is_finite() && s.target > 0.0) {
                bad("scaling.target", "a positive number")?;
            }
            if s.scale_down_window_seconds > 86_400 {
                bad("scaling.scale_down_window_seconds", "at most 86400")?;
            }
        }
        if let Some(b) = &self.balancer {
            if b.listen.port() == 0 {
                bad("balancer.listen", "a fixed port (clients connect to it)")?;
            }
            if b.driver == BalancerDriver::Nftables && b.algorithm == Algorithm::Leastconn {
                rule(
                    "balancer.algorithm",
                    "the nftables driver cannot count connections: roundrobin or source, or the haproxy driver",
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "name": "web", "pool": "p1",
            "command": ["python3", "-m", "http.server", "{port}"],
            "port": 0,
            "health": {"kind": "http", "path": "/", "interval_seconds": 5, "timeout_seconds": 2, "failures": 3},
            "instances": {"min": 2, "max": 10, "desired": 3},
            "scaling": {"metric": "cpu.percent", "target": 60},
            "balancer": {"listen": "127.0.0.1:8080", "driver": "haproxy"}
        })
    }

    fn check(patch: impl Fn(&mut serde_json::Value)) -> Result<(), FieldError> {
        let mut v = good();
        patch(&mut v);
        let spec: ServiceSpec = serde_json::from_value(v).expect("decodes");
        spec.validate()
    }

    #[test]
    fn a_good_spec_passes_with_defaults_filled_in() {
        check(|_| {}).unwrap();
        let spec: ServiceSpec = serde_json::from_value(good()).unwrap();
        assert_eq!(spec.scaling.unwrap().scale_down_window_seconds, 300);
        assert_eq!(spec.balancer.unwrap().algorithm, Algorithm::Roundrobin);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Patch = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Patch)> = vec![
            ("name", Box::new(|v| v["name"] = "Web!".into())),
            ("pool", Box::new(|v| v["pool"] = "".into())),
            (
                "command",
                Box::new(|v| v["command"] = serde_json::json!([])),
            ),
            ("package", Box::new(|v| v["package"] = "web.tar.zst".into())),
            (
                "env",
                Box::new(|v| v["env"] = serde_json::json!({"1X": "y"})),
            ),
            (
                "instances.min",
                Box::new(|v| v["instances"]["min"] = 11.into()),
            ),
            (
                "instances.desired",
                Box::new(|v| v["instances"]["desired"] = 1.into()),
            ),
            (
                "instances.max",
                Box::new(|v| {
                    v["instances"] = serde_json::json!({"min": 0, "max": 0, "desired": 0})
                }),
            ),
            (
                "health.path",
                Box::new(|v| v["health"]["path"] = "no slash".into()),
            ),
            (
                "health.timeout_seconds",
                Box::new(|v| v["health"]["timeout_seconds"] = 9.into()),
            ),
            (
                "health.failures",
                Box::new(|v| v["health"]["failures"] = 0.into()),
            ),
            (
                "scaling.target",
                Box::new(|v| v["scaling"]["target"] = (-1).into()),
            ),
            (
                "balancer.listen",
                Box::new(|v| v["balancer"]["listen"] = "127.0.0.1:0".into()),
            ),
        ];
        for (field, patch) in cases {
            let err = check(patch).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn unknown_fields_and_values_are_refused_when_decoding() {
        let mut v = good();
        v["replicas"] = 3.into();
        assert!(serde_json::from_value::<ServiceSpec>(v).is_err());
        let mut v = good();
        v["balancer"]["driver"] = "f5".into();
        assert!(serde_json::from_value::<ServiceSpec>(v).is_err());
    }
}

//! GLORY-CL's service manager (issue 18, started; docs/SERVICES.md): services that
//! install, run, heal and scale themselves behind an L4 load balancer.
//!
//! Built so far, pure and tested:
//! - [`spec`]: the service model as operators give it (`POST /api/v1/services`) and
//!   its validation, every error naming its field.
//! - [`autoscale`]: the autoscaler's decision, the way Kubernetes' HPA makes it (time
//!   passed in): desired = ceil(current x value / target) outside a 10% tolerance,
//!   up at once, down only to the highest recommendation of the window, a rate limit
//!   per minute, never outside min..max; each decision with its inputs and reason.
//!
//! - [`balancer`]: L4 balancer drivers; `haproxy` changes a running HAProxy through
//!   its runtime API (add, weight, drain, remove; no reload), the plan pure.
//!
//! Not built yet: the reconcile loop in the active cluster master, the agents' side of
//! instances, health checks, the API and CLI, and the nftables, IPVS and keepalived
//! drivers.
//!
//! Architecture invariant: depends on no workspace crate yet; decisions are pure.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod balancer;
pub mod model;
pub mod reconcile;
pub mod spec;

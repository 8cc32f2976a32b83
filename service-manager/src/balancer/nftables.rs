//! The `nftables` driver: a kernel L4 balancer made of nftables NAT rules, driven
//! through `nft`'s JSON interface (the `nftables` crate's schema types).
//!
//! Glory owns one table per balancer, `ip glory_<service>` (`ip6` for an IPv6
//! address), holding:
//! - `prerouting` (nat, `dstnat`): TCP to the service's `listen` address is DNATed to
//!   a backend chosen by `numgen inc mod N map { 0: addr . port, ... }` (roundrobin) or
//!   `jhash ip saddr mod N map { ... }` (source). With no backend it is answered with a
//!   TCP reset, so clients fail at once instead of waiting out a timeout.
//! - `output` (nat, `dstnat`): the same rule, so that connections made on the balancer
//!   host itself are balanced too.
//! - `postrouting` (nat, `srcnat`, when [`Options::masquerade`]): the balanced
//!   connections leave with the balancer's address ("full NAT"), so backends answer the
//!   balancer whatever their routes; without it the balancer must be the backends'
//!   gateway (LVS-NAT style) and backends see the clients' addresses.
//!
//! Every sync replaces the whole table in one `nft -j -f -` transaction (`add table`,
//! `delete table`, then the new table), which the kernel applies atomically: a packet
//! sees the old rules or the new ones, never half a set. Established connections are
//! not affected by a change, because their DNAT lives in conntrack, not in the rules:
//! a removed backend keeps the connections it has and gets no new ones.
//!
//! What to write is decided by [`ruleset`] (pure); [`NftBalancer`] only runs `nft`.
//!
//! Limits: TCP only. `leastconn` is refused (see [`PlanError::Leastconn`]). The host
//! (or namespace) must forward packets (`net.ipv4.ip_forward=1`, see
//! [`NftBalancer::forwarding`]) for clients on other hosts.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::nftables::expr::{
    Expression, JHash, Map, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload, PayloadField,
    SetItem, CT,
};
use ::nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use ::nftables::stmt::{Match, Operator, Reject, RejectType, Statement, NAT};
use ::nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use anyhow::Context;
use tokio::io::AsyncWriteExt;

use super::Backend;
use crate::spec::Algorithm;

/// Slots in the map of a `source` balancer. Fixed, so that a change of backends only
/// moves the slots of the backends that changed (see [`slots`]); large enough that
/// weights come out within a few percent.
pub const SOURCE_SLOTS: u32 = 1024;

/// At most this many slots for a `roundrobin` balancer: larger weights are scaled down
/// to fit (each backend keeps at least one slot).
pub const MAX_ROUNDROBIN_SLOTS: u32 = 256;

/// The highest weight, as for the other drivers.
pub const MAX_WEIGHT: u32 = 256;

/// The seed of `jhash`: fixed, so that the same backends give the same mapping after
/// any sync or restart.
pub const JHASH_SEED: u32 = 0x676c_6f72;

/// Priority of the DNAT chains (`dstnat`) and of the masquerade chain (`srcnat`).
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

pub const PREROUTING: &str = "prerouting";
pub const OUTPUT: &str = "output";
pub const POSTROUTING: &str = "postrouting";

/// Why a balancer cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// nftables picks a backend per new connection from the packet alone (a counter
    /// or a hash): it cannot see how many connections each backend has. Falling back
    /// silently to roundrobin would give the operator a behaviour they did not ask
    /// for, so it is refused.
    #[error(
        "the nftables driver cannot do leastconn (NAT rules cannot see how many connections \
         each backend has): use algorithm roundrobin or source, or the haproxy driver"
    )]
    Leastconn,
    #[error("backend {name} ({addr}) is not of the family of the balancer's address {listen}: use backends of one IP version")]
    Family {
        name: String,
        addr: SocketAddr,
        listen: SocketAddr,
    },
    #[error("backend {name} has address {addr}: a backend needs a specific IP address and a port")]
    Address { name: String, addr: SocketAddr },
    #[error("backend {name} has weight {weight}: weights are 0-{MAX_WEIGHT} (0 sends it nothing)")]
    Weight { name: String, weight: u32 },
    #[error("the balancer's address {0} has port 0: give the port clients connect to")]
    Listen(SocketAddr),
}

/// The table of `service`'s balancer: `glory_` and the name with anything but ASCII
/// letters and digits made `_` (service names are `[a-z0-9-]`, so two valid names
/// never share a table), so that operators can type it to `nft list table`.
pub fn table_name(service: &str) -> String {
    let cleaned: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(200)
        .collect();
    format!("glory_{cleaned}")
}

fn family(listen: SocketAddr) -> (NfFamily, &'static str, ::nftables::stmt::NATFamily) {
    match listen {
        SocketAddr::V4(_) => (NfFamily::IP, "ip", ::nftables::stmt::NATFamily::IP),
        SocketAddr::V6(_) => (NfFamily::IP6, "ip6", ::nftables::stmt::NATFamily::IP6),
    }
}

fn check(listen: SocketAddr, algorithm: Algorithm, backends: &[Backend]) -> Result<(), PlanError> {
    if algorithm == Algorithm::Leastconn {
        return Err(PlanError::Leastconn);
    }
    if listen.port() == 0 {
        return Err(PlanError::Listen(listen));
    }
    for b in backends {
        if b.addr.is_ipv4() != listen.is_ipv4() {
            return Err(PlanError::Family {
                name: b.name.clone(),
                addr: b.addr,
                listen,
            });
        }
        if b.addr.port() == 0 || b.addr.ip().is_unspecified() {
            return Err(PlanError::Address {
                name: b.name.clone(),
                addr: b.addr,
            });
        }
        if b.weight > MAX_WEIGHT {
            return Err(PlanError::Weight {
                name: b.name.clone(),
                weight: b.weight,
            });
        }
    }
    Ok(())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their greatest common divisor, then scaled down to about
/// `max_total` slots in all when they need more; a positive weight keeps at least one
/// slot, 0 stays 0.
fn scaled_weights(weights: &[u32], max_total: u32) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let reduced: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= u64::from(max_total) {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| {
            if w == 0 {
                0
            } else {
                let share = u64::from(w) * u64::from(max_total) / total;
                u32::try_from(share).unwrap_or(max_total).max(1)
            }
        })
        .collect()
}

/// Smooth weighted round robin (as nginx does it): the order in which `weights` take
/// their turns, spread out rather than in runs (weights 2, 1 give 0, 1, 0).
fn interleave(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

/// A stable 64-bit hash (FNV-1a, then splitmix64's finaliser to spread the bits):
/// the same on every build, unlike std's hasher, so slots do not move on upgrade.
fn stable_hash(name: &str, slot: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain([0xff]).chain(slot.to_le_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `slot` by weighted rendezvous hashing: the backend with the highest
/// `weight / -ln(u)`, `u` a hash of (name, slot) in (0, 1).
fn rendezvous_owner(slot: u32, backends: &[&Backend]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, b) in backends.iter().enumerate() {
        let u = ((stable_hash(&b.name, slot) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(b.weight) / -u.ln();
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// The balancer's map: slot `i` sends to the `i`th address. Pure.
///
/// - roundrobin: each backend gets slots in proportion to its weight (weights over
///   [`MAX_ROUNDROBIN_SLOTS`] in all are scaled down), in smooth weighted round-robin
///   order, so `numgen inc` spreads consecutive connections.
/// - source: [`SOURCE_SLOTS`] slots, each owned by weighted rendezvous hashing of the
///   backend's name. The number of slots never changes, so removing a backend moves
///   only its own clients and adding one takes only its share: the same affinity as
///   HAProxy's `source` with consistent hashing.
///
/// Backends of weight 0 get no slot. The result does not depend on the order of
/// `backends`.
pub fn slots(algorithm: Algorithm, backends: &[Backend]) -> Result<Vec<SocketAddr>, PlanError> {
    if algorithm == Algorithm::Leastconn {
        return Err(PlanError::Leastconn);
    }
    let mut live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    live.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
    if live.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match algorithm {
        Algorithm::Source => (0..SOURCE_SLOTS)
            .map(|slot| live[rendezvous_owner(slot, &live)].addr)
            .collect(),
        _ => {
            let weights: Vec<u32> = live.iter().map(|b| b.weight).collect();
            interleave(&scaled_weights(&weights, MAX_ROUNDROBIN_SLOTS))
                .into_iter()
                .map(|i| live[i].addr)
                .collect()
        }
    })
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn address(ip: IpAddr) -> Expression<'static> {
    Expression::String(ip.to_string().into())
}

fn nat_chain(family: NfFamily, table: &str, name: &'static str, hook: NfHook) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(Chain {
        family,
        table: table.to_string().into(),
        name: name.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(if hook == NfHook::Postrouting {
            SRCNAT
        } else {
            DSTNAT
        }),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })))
}

fn rule(
    family: NfFamily,
    table: &str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family,
        table: table.to_string().into(),
        chain: chain.into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: None,
    })))
}

fn table(family: NfFamily, name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: name.to_string().into(),
        handle: None,
    })
}

/// The `nft` transaction that makes `service`'s table balance `listen` over
/// `backends`, replacing whatever the table held. Pure.
///
/// An unspecified `listen` address (`0.0.0.0`) balances the port on every address.
pub fn ruleset(
    service: &str,
    listen: SocketAddr,
    algorithm: Algorithm,
    backends: &[Backend],
    masquerade: bool,
) -> Result<Nftables<'static>, PlanError> {
    check(listen, algorithm, backends)?;
    let slots = slots(algorithm, backends)?;
    let name = table_name(service);
    let (family, l3, nat_family) = family(listen);

    let mut to_service = Vec::new();
    if !listen.ip().is_unspecified() {
        to_service.push(matches(field(l3, "daddr"), address(listen.ip())));
    }
    to_service.push(matches(
        field("tcp", "dport"),
        Expression::Number(u32::from(listen.port())),
    ));

    let verdict = if slots.is_empty() {
        Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
    } else {
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let key = match algorithm {
            Algorithm::Source => NamedExpression::JHash(JHash {
                hash_mod: count,
                offset: None,
                expr: Box::new(field(l3, "saddr")),
                seed: Some(JHASH_SEED),
            }),
            _ => NamedExpression::Numgen(Numgen {
                mode: NgMode::Inc,
                ng_mod: count,
                offset: None,
            }),
        };
        let items = slots
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                SetItem::Mapping(
                    Expression::Number(u32::try_from(i).unwrap_or(u32::MAX)),
                    Expression::Named(NamedExpression::Concat(vec![
                        address(addr.ip()),
                        Expression::Number(u32::from(addr.port())),
                    ])),
                )
            })
            .collect();
        Statement::DNAT(Some(NAT {
            addr: Some(Expression::Named(NamedExpression::Map(Box::new(Map {
                key: Expression::Named(key),
                data: Expression::Named(NamedExpression::Set(items)),
            })))),
            family: Some(nat_family),
            port: None,
            flags: None,
        }))
    };
    let mut dnat = to_service;
    dnat.push(verdict);

    // Creating the table first makes the delete valid when it did not exist yet; the
    // three together are one transaction.
    let mut objects = vec![
        NfObject::CmdObject(NfCmd::Add(table(family, &name))),
        NfObject::CmdObject(NfCmd::Delete(table(family, &name))),
        NfObject::CmdObject(NfCmd::Add(table(family, &name))),
        nat_chain(family, &name, PREROUTING, NfHook::Prerouting),
        nat_chain(family, &name, OUTPUT, NfHook::Output),
        rule(family, &name, PREROUTING, dnat.clone()),
        rule(family, &name, OUTPUT, dnat),
    ];
    if masquerade {
        // Only connections that came to the service and were DNATed: the original
        // direction's destination is still the service's address in conntrack.
        let mut expr = vec![matches(
            Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::L4proto,
            })),
            Expression::String("tcp".into()),
        )];
        if !listen.ip().is_unspecified() {
            expr.push(matches(
                ct_original(&format!("{l3} daddr")),
                address(listen.ip()),
            ));
        }
        expr.push(matches(
            ct_original("proto-dst"),
            Expression::Number(u32::from(listen.port())),
        ));
        expr.push(Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: "status".into(),
                family: None,
                dir: None,
            })),
            right: Expression::String("dnat".into()),
            op: Operator::IN,
        }));
        expr.push(Statement::Masquerade(None));
        objects.push(nat_chain(family, &name, POSTROUTING, NfHook::Postrouting));
        objects.push(rule(family, &name, POSTROUTING, expr));
    }
    Ok(Nftables {
        objects: objects.into(),
    })
}

fn ct_original(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.to_string().into(),
        family: None,
        dir: Some(::nftables::expr::CTDir::Original),
    }))
}

/// The transaction that removes `service`'s table (nothing when there is none). Pure.
pub fn teardown(service: &str, listen: SocketAddr) -> Nftables<'static> {
    let name = table_name(service);
    let (family, _, _) = family(listen);
    Nftables {
        objects: vec![
            NfObject::CmdObject(NfCmd::Add(table(family, &name))),
            NfObject::CmdObject(NfCmd::Delete(table(family, &name))),
        ]
        .into(),
    }
}

/// The slots of the balancer as `nft -j list table` shows it: the map of the first
/// DNAT rule in `prerouting`, in slot order; empty when it rejects. Pure.
pub fn installed_slots(listing: &Nftables) -> Vec<SocketAddr> {
    for object in listing.objects.iter() {
        let NfObject::ListObject(NfListObject::Rule(rule)) = object else {
            continue;
        };
        if rule.chain != PREROUTING {
            continue;
        }
        for statement in rule.expr.iter() {
            let Statement::DNAT(Some(NAT {
                addr: Some(Expression::Named(NamedExpression::Map(map))),
                ..
            })) = statement
            else {
                continue;
            };
            let Expression::Named(NamedExpression::Set(items)) = &map.data else {
                continue;
            };
            let mut slots: Vec<(u32, SocketAddr)> = items
                .iter()
                .filter_map(|item| {
                    // Read back, a pair is an untagged list as often as a mapping.
                    let (key, value) = match item {
                        SetItem::Mapping(key, value) => (key, value),
                        SetItem::Element(Expression::List(pair)) if pair.len() == 2 => {
                            (&pair[0], &pair[1])
                        }
                        _ => return None,
                    };
                    let (
                        Expression::Number(slot),
                        Expression::Named(NamedExpression::Concat(parts)),
                    ) = (key, value)
                    else {
                        return None;
                    };
                    match parts.as_slice() {
                        [Expression::String(ip), Expression::Number(port)] => {
                            let ip: IpAddr = ip.parse().ok()?;
                            Some((*slot, SocketAddr::new(ip, u16::try_from(*port).ok()?)))
                        }
                        _ => None,
                    }
                })
                .collect();
            slots.sort_by_key(|(slot, _)| *slot);
            return slots.into_iter().map(|(_, addr)| addr).collect();
        }
    }
    Vec::new()
}

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The network namespace the balancer's address lives in: `nft` runs as
    /// `ip netns exec NAME nft`. None: the caller's own namespace.
    pub netns: Option<String>,
    /// Masquerade balanced connections behind the balancer's address (full NAT).
    /// Backends then need no route back to the clients, which instances on other
    /// nodes do not have; the cost is that they see the balancer as the client.
    pub masquerade: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            netns: None,
            masquerade: true,
        }
    }
}

/// What a sync wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Synced {
    /// Backends that got at least one slot.
    pub backends: usize,
    pub slots: usize,
}

/// A balancer in the kernel, managed through `nft`. Dropping it leaves the table in
/// place on purpose: the kernel keeps balancing while glory restarts. [`stop`](Self::stop)
/// removes it.
#[derive(Clone, Debug)]
pub struct NftBalancer {
    service: String,
    listen: SocketAddr,
    algorithm: Algorithm,
    options: Options,
    nft: PathBuf,
    ip: Option<PathBuf>,
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// `nft` (or `ip netns exec NAME nft`) with `args`: the program and its arguments.
/// Pure.
pub fn nft_command(
    nft: &Path,
    ip: Option<&Path>,
    netns: Option<&str>,
    args: &[&str],
) -> (PathBuf, Vec<String>) {
    let mut argv: Vec<String> = Vec::new();
    let program = match (netns, ip) {
        (Some(ns), Some(ip)) => {
            argv.extend(["netns", "exec", ns].map(String::from));
            argv.push(nft.display().to_string());
            ip.to_path_buf()
        }
        _ => nft.to_path_buf(),
    };
    argv.extend(args.iter().map(|a| a.to_string()));
    (program, argv)
}

impl NftBalancer {
    /// A balancer for `service` on `listen`. Checks that `nft` (and `ip` for a
    /// namespace) is installed and that nftables can do `algorithm`; touches nothing.
    pub fn new(
        service: &str,
        listen: SocketAddr,
        algorithm: Algorithm,
        options: Options,
    ) -> anyhow::Result<Self> {
        check(listen, algorithm, &[])?;
        let nft = find(&[
            "/usr/sbin/nft",
            "/sbin/nft",
            "/usr/bin/nft",
            "/usr/local/sbin/nft",
        ])
        .context(
            "nft is not installed: apt-get install nftables (the nftables driver runs nft -j)",
        )?;
        let ip = match options.netns {
            Some(_) => Some(
                find(&["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])
                    .context("ip is not installed: apt-get install iproute2 (the nftables driver enters the balancer's namespace with ip netns exec)")?,
            ),
            None => None,
        };
        Ok(NftBalancer {
            service: service.to_string(),
            listen,
            algorithm,
            options,
            nft,
            ip,
        })
    }

    /// The table, as `nft list table` takes it (`ip glory_web`).
    pub fn table(&self) -> String {
        let (_, l3, _) = family(self.listen);
        format!("{l3} {}", table_name(&self.service))
    }

    /// Run `nft` with `args`, `stdin` written to it; its standard output. Its own
    /// complaint (standard error) is the error. The crate's `helper::apply_ruleset`
    /// would do the same but drops `nft`'s standard error, which is the only place
    /// that says what is wrong.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let (program, argv) = nft_command(
            &self.nft,
            self.ip.as_deref(),
            self.options.netns.as_deref(),
            args,
        );
        let mut child = tokio::process::Command::new(&program)
            .args(&argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        if let Some(mut pipe) = child.stdin.take() {
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes())
                    .await
                    .context("write to nft")?;
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .context("nft did not finish within 10 s")??;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let hint = if said.contains("Operation not permitted") {
                " (nft needs root or CAP_NET_ADMIN)"
            } else if said.contains("Cannot open network namespace") {
                " (create the namespace with ip netns add, or fix the driver's netns)"
            } else {
                ""
            };
            anyhow::bail!("`nft {}` failed: {said}{hint}", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn apply(&self, ruleset: &Nftables<'_>) -> anyhow::Result<()> {
        let json = serde_json::to_string(ruleset).context("encode the nftables ruleset")?;
        self.run(&["-j", "-f", "-"], Some(&json))
            .await
            .with_context(|| format!("nft refused the ruleset of table {}", self.table()))?;
        Ok(())
    }

    /// Make the balancer's backends equal `wanted`, in one transaction. Connections
    /// already made keep their backend; new ones go to `wanted` only.
    pub async fn sync(&self, wanted: &[Backend]) -> anyhow::Result<Synced> {
        let ruleset = ruleset(
            &self.service,
            self.listen,
            self.algorithm,
            wanted,
            self.options.masquerade,
        )?;
        self.apply(&ruleset).await?;
        let slots = slots(self.algorithm, wanted)?;
        Ok(Synced {
            backends: wanted.iter().filter(|b| b.weight > 0).count(),
            slots: slots.len(),
        })
    }

    /// The slots in the kernel now (see [`slots`]); None when the table does not exist.
    pub async fn installed(&self) -> anyhow::Result<Option<Vec<SocketAddr>>> {
        let table = self.table();
        let mut args = vec!["-j", "list", "table"];
        args.extend(table.split(' '));
        let listing = match self.run(&args, None).await {
            Ok(text) => text,
            Err(e) if format!("{e:#}").contains("No such file or directory") => return Ok(None),
            Err(e) => return Err(e),
        };
        let listing: Nftables = serde_json::from_str(&listing)
            .with_context(|| format!("read nft's listing of {table}"))?;
        Ok(Some(installed_slots(&listing)))
    }

    /// Whether the balancer's namespace forwards packets of the listen address's
    /// family: without it only connections made on the balancer host are balanced.
    pub async fn forwarding(&self) -> anyhow::Result<bool> {
        let key = match self.listen {
            SocketAddr::V4(_) => "/proc/sys/net/ipv4/ip_forward",
            SocketAddr::V6(_) => "/proc/sys/net/ipv6/conf/all/forwarding",
        };
        let value = match (&self.options.netns, &self.ip) {
            (Some(ns), Some(ip)) => {
                let out = tokio::process::Command::new(ip)
                    .args(["netns", "exec", ns, "cat", key])
                    .output()
                    .await
                    .context("read the namespace's forwarding setting")?;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            _ => std::fs::read_to_string(key).with_context(|| format!("read {key}"))?,
        };
        Ok(value.trim() == "1")
    }

    /// Remove the table: the balancer stops balancing at once (connections in
    /// progress lose their translation). Nothing to do when it is gone already.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.apply(&teardown(&self.service, self.listen)).await
    }
}

#[cfg(test)]
mod tests;

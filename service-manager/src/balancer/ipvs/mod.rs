//! The `ipvs` driver: the kernel's own L4 balancer (IPVS), programmed through its
//! generic netlink family "IPVS" as `ipvsadm` does, with no process of ours in the
//! data path. One virtual service (TCP on the balancer's `listen` address, scheduler
//! `wrr`, `wlc` or `sh` for roundrobin, leastconn and source) with one masqueraded
//! (NAT) destination per healthy instance.
//!
//! Removal drains first, as the `haproxy` driver does: IPVS has no drain state, but a
//! destination at weight 0 gets no new connections from any scheduler while its open
//! ones go on, so a removed instance is set to weight 0, polled through the
//! destination dump until it has no active connection (or the drain timeout passes),
//! then deleted.
//!
//! Split like the other drivers: [`wire`] encodes the requests and reads the replies
//! (pure, checked byte for byte against the kernel's documented layout), [`plan`]
//! decides what to change (pure), and [`Ipvs`] is the thin part that talks to the
//! kernel. A kernel without IPVS (no `ip_vs` module, or one that cannot be loaded)
//! is found when the family is resolved and reported as [`IpvsError::NotAvailable`],
//! which says what to do.

pub mod wire;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_GENERIC, AsyncSocket, AsyncSocketExt, TokioSocket};

use super::Backend;
use crate::spec::Algorithm;

/// The virtual service: where clients connect, and how IPVS picks a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub listen: SocketAddr,
    pub algorithm: Algorithm,
}

impl Service {
    /// The IPVS scheduler (the same mapping as the keepalived driver's `lb_algo`).
    pub fn scheduler(&self) -> &'static str {
        super::keepalived::scheduler(self.algorithm)
    }
}

/// A destination as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub addr: SocketAddr,
    /// 0 while draining.
    pub weight: u32,
    /// Established connections: a draining destination is idle when this is 0.
    pub active_conns: u32,
    /// Connections in other states (TIME_WAIT...), which need no draining.
    pub inactive_conns: u32,
}

/// One change to the destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Add {
        addr: SocketAddr,
        weight: u32,
    },
    Weight {
        addr: SocketAddr,
        weight: u32,
    },
    /// Weight 0: no new connections; the open ones finish.
    Drain {
        addr: SocketAddr,
    },
    /// Drained and idle (the driver waits for it): take it out.
    Remove {
        addr: SocketAddr,
    },
}

/// What makes `current` equal `wanted`. Pure. IPVS knows a destination by its
/// address alone, so an instance that moved is a new destination and the old one is
/// drained and removed; of two wanted backends on one address the first counts.
/// Order: additions and weights first (capacity before removal), then every drain,
/// then every removal, so that all removed destinations drain at the same time.
pub fn plan(current: &[Dest], wanted: &[Backend]) -> Vec<Op> {
    let mut wanted_addrs = BTreeSet::new();
    let mut changes = Vec::new();
    for w in wanted {
        if !wanted_addrs.insert(w.addr) {
            continue;
        }
        match current.iter().find(|c| c.addr == w.addr) {
            None => changes.push(Op::Add {
                addr: w.addr,
                weight: w.weight,
            }),
            Some(c) if c.weight != w.weight => changes.push(Op::Weight {
                addr: w.addr,
                weight: w.weight,
            }),
            Some(_) => {}
        }
    }
    let gone: Vec<&Dest> = current
        .iter()
        .filter(|c| !wanted_addrs.contains(&c.addr))
        .collect();
    for c in &gone {
        // At weight 0 it is draining already (an earlier sync was cut short).
        if c.weight != 0 {
            changes.push(Op::Drain { addr: c.addr });
        }
    }
    for c in gone {
        changes.push(Op::Remove { addr: c.addr });
    }
    changes
}

/// The request for one change, with sequence number `seq`.
pub fn message(family: u16, service: &Service, op: &Op, seq: u32) -> Vec<u8> {
    match *op {
        Op::Add { addr, weight } => wire::new_dest(family, seq, service, addr, weight),
        Op::Weight { addr, weight } => wire::set_dest(family, seq, service, addr, weight),
        Op::Drain { addr } => wire::set_dest(family, seq, service, addr, 0),
        Op::Remove { addr } => wire::del_dest(family, seq, service, addr),
    }
}

/// The requests for `ops`, numbered from `first_seq`.
pub fn messages(family: u16, service: &Service, ops: &[Op], first_seq: u32) -> Vec<Vec<u8>> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| message(family, service, op, first_seq.wrapping_add(i as u32)))
        .collect()
}

/// IPVS forwards by NAT only within one address family (mixing needs tunnelling).
pub fn check_families(service: &Service, wanted: &[Backend]) -> Result<(), IpvsError> {
    match wanted
        .iter()
        .find(|b| b.addr.is_ipv4() != service.listen.is_ipv4())
    {
        Some(b) => Err(IpvsError::MixedFamilies {
            backend: b.addr,
            listen: service.listen,
        }),
        None => Ok(()),
    }
}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The caller may fall back to another driver.
    #[error(
        "this kernel has no IPVS: the generic netlink family \"IPVS\" does not exist \
         (module ip_vs not loaded, or not available in this kernel); load it with \
         `modprobe ip_vs`, or give the service another balancer driver (haproxy or nftables)"
    )]
    NotAvailable,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request; the message names the request, the errno and
    /// what to do about it.
    #[error("{message}")]
    Kernel { errno: i32, message: String },
    #[error("{what}: no answer from the kernel within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: the kernel's answer does not parse: {detail}")]
    Malformed {
        what: String,
        detail: wire::Malformed,
    },
    #[error(
        "backend {backend} and the service's address {listen} are not in one address \
         family: IPVS masquerading needs both IPv4 or both IPv6"
    )]
    MixedFamilies {
        backend: SocketAddr,
        listen: SocketAddr,
    },
}

impl IpvsError {
    /// The kernel's errno, for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The error for a refused request: what was asked, what the kernel said, and what
/// to do. Pure.
pub fn refused(what: &str, cmd: u8, reply: &wire::ErrorReply, scheduler: &str) -> IpvsError {
    let said = std::io::Error::from_raw_os_error(reply.errno);
    let mut message = format!("{what}: the kernel refused it: {said}");
    if let Some(extra) = &reply.message {
        message.push_str(&format!(" ({extra})"));
    }
    let hint = match (reply.errno, cmd) {
        (EPERM, _) => Some(
            "IPVS needs CAP_NET_ADMIN: run the service manager as root or grant it \
             cap_net_admin"
                .to_string(),
        ),
        // genetlink also answers ENOENT for a family id that is gone: ip_vs unloaded.
        (ENOENT, wire::IPVS_CMD_NEW_SERVICE | wire::IPVS_CMD_SET_SERVICE) => Some(format!(
            "the kernel has no scheduler `{scheduler}` (`modprobe ip_vs_{scheduler}`, or \
             choose another algorithm), or ip_vs was unloaded since connecting"
        )),
        (ENOENT, wire::IPVS_CMD_SET_DEST | wire::IPVS_CMD_DEL_DEST) => Some(
            "the destination is gone (removed outside glory?); the next sync reads the \
             table again"
                .to_string(),
        ),
        (ESRCH, _) => Some(
            "the virtual service is gone (deleted outside glory?); the next sync creates it \
             again"
                .to_string(),
        ),
        (EEXIST, wire::IPVS_CMD_NEW_DEST) => Some(
            "the destination was added outside glory; the next sync reads the table again"
                .to_string(),
        ),
        _ => None,
    };
    if let Some(hint) = hint {
        message.push_str("; ");
        message.push_str(&hint);
    }
    IpvsError::Kernel {
        errno: reply.errno,
        message,
    }
}

/// What `sync` did (`cut`: whether cut connections go on then depends on
/// `net.ipv4.vs.expire_nodest_conn`).
pub use super::SyncReport;

/// A generic netlink socket with the IPVS family resolved.
pub struct Ipvs {
    socket: TokioSocket,
    family: u16,
    seq: u32,
    /// For one answer; the kernel answers while handling the send, so this only
    /// bounds a kernel that never does.
    timeout: Duration,
}

impl Ipvs {
    /// Open the socket and resolve the "IPVS" family; [`IpvsError::NotAvailable`]
    /// on a kernel without IPVS.
    pub async fn connect() -> Result<Self, IpvsError> {
        let io = |source| IpvsError::Io {
            what: "open a generic netlink socket".into(),
            source,
        };
        let mut socket = TokioSocket::new(NETLINK_GENERIC).map_err(io)?;
        socket.socket_mut().bind_auto().map_err(io)?;
        // Errors with the kernel's explanation and without our request echoed
        // back; both are optional (Linux 4.12 and 4.2), hence no error if refused.
        let _ = socket.socket_ref().set_ext_ack(true);
        let _ = socket.socket_ref().set_cap_ack(true);
        let mut ipvs = Ipvs {
            socket,
            family: wire::GENL_ID_CTRL,
            seq: 0,
            timeout: Duration::from_secs(5),
        };
        let seq = ipvs.next_seq();
        let what = "resolve the generic netlink family \"IPVS\"";
        let answers = match ipvs
            .exchange(
                what,
                "",
                &wire::get_family(seq),
                seq,
                wire::GENL_ID_CTRL,
                false,
            )
            .await
        {
            Err(IpvsError::Kernel { errno: ENOENT, .. }) => return Err(IpvsError::NotAvailable),
            other => other?,
        };
        let family = answers
            .iter()
            .find_map(|payload| wire::parse_family_id(payload).ok())
            .ok_or_else(|| IpvsError::Malformed {
                what: what.to_string(),
                detail: wire::Malformed("no CTRL_CMD_NEWFAMILY with a family id".into()),
            })?;
        ipvs.family = family;
        Ok(ipvs)
    }

    /// The family id the kernel gave IPVS.
    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send `request` and collect the payloads of the answers of type `kind` until
    /// its acknowledgement (or, for a dump, NLMSG_DONE). Messages for other
    /// sequence numbers (answers to a request that timed out) are skipped.
    /// `scheduler` only makes an error's hint precise.
    async fn exchange(
        &self,
        what: &str,
        scheduler: &str,
        request: &[u8],
        seq: u32,
        kind: u16,
        dump: bool,
    ) -> Result<Vec<Vec<u8>>, IpvsError> {
        // The genlmsghdr's command, for the hint of an error.
        let cmd = request.get(16).copied().unwrap_or_default();
        self.socket
            .send(request)
            .await
            .map_err(|source| IpvsError::Io {
                what: format!("{what}: send to the kernel"),
                source,
            })?;
        let mut answers = Vec::new();
        loop {
            let (datagram, from) = tokio::time::timeout(self.timeout, self.socket.recv_from_full())
                .await
                .map_err(|_| IpvsError::Timeout {
                    what: what.to_string(),
                    timeout: self.timeout,
                })?
                .map_err(|source| IpvsError::Io {
                    what: format!("{what}: receive from the kernel"),
                    source,
                })?;
            if from.port_number() != 0 {
                continue; // not from the kernel
            }
            let malformed = |detail| IpvsError::Malformed {
                what: what.to_string(),
                detail,
            };
            for m in wire::split(&datagram).map_err(malformed)? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    wire::NLMSG_ERROR => {
                        let reply = wire::parse_error(m.flags, m.payload).map_err(malformed)?;
                        if reply.errno != 0 {
                            return Err(refused(what, cmd, &reply, scheduler));
                        }
                        if !dump {
                            return Ok(answers);
                        }
                    }
                    wire::NLMSG_DONE if dump => {
                        let errno = wire::done_errno(m.payload);
                        if errno != 0 {
                            let reply = wire::ErrorReply {
                                errno,
                                message: None,
                            };
                            return Err(refused(what, cmd, &reply, scheduler));
                        }
                        return Ok(answers);
                    }
                    k if k == kind => answers.push(m.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// One IPVS request that is acknowledged.
    async fn request(
        &mut self,
        what: &str,
        service: &Service,
        build: impl FnOnce(u16, u32) -> Vec<u8>,
    ) -> Result<(), IpvsError> {
        let seq = self.next_seq();
        let request = build(self.family, seq);
        self.exchange(what, service.scheduler(), &request, seq, self.family, false)
            .await
            .map(|_| ())
    }

    /// Create the virtual service, or bring an existing one to `service`'s scheduler.
    pub async fn ensure_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        let what = format!("add virtual service {}", service.listen);
        match self
            .request(&what, service, |f, s| wire::new_service(f, s, service))
            .await
        {
            Err(e) if e.errno() == Some(EEXIST) => {
                let what = format!("update virtual service {}", service.listen);
                self.request(&what, service, |f, s| wire::set_service(f, s, service))
                    .await
            }
            other => other,
        }
    }

    /// Delete the virtual service and its destinations; done if it is not there.
    pub async fn remove_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        let what = format!("delete virtual service {}", service.listen);
        match self
            .request(&what, service, |f, s| wire::del_service(f, s, service))
            .await
        {
            Err(e) if e.errno() == Some(ESRCH) => Ok(()),
            other => other,
        }
    }

    /// The service's destinations; none when the service does not exist.
    pub async fn dests(&mut self, service: &Service) -> Result<Vec<Dest>, IpvsError> {
        let seq = self.next_seq();
        let what = format!("list the destinations of {}", service.listen);
        let request = wire::get_dests(self.family, seq, service);
        let answers = self
            .exchange(&what, "", &request, seq, self.family, true)
            .await?;
        let af = wire::address_family(service.listen);
        answers
            .iter()
            .map(|payload| wire::parse_dest(payload, af))
            .collect::<Result<_, _>>()
            .map_err(|detail| IpvsError::Malformed { what, detail })
    }

    async fn apply(&mut self, service: &Service, op: &Op) -> Result<(), IpvsError> {
        let what = match op {
            Op::Add { addr, weight } => {
                format!("add {addr} (weight {weight}) to {}", service.listen)
            }
            Op::Weight { addr, weight } => {
                format!("set the weight of {addr} in {} to {weight}", service.listen)
            }
            Op::Drain { addr } => format!("drain {addr} in {} (weight 0)", service.listen),
            Op::Remove { addr } => format!("remove {addr} from {}", service.listen),
        };
        self.request(&what, service, |f, s| message(f, service, op, s))
            .await
    }

    /// Make the service's destinations equal `wanted`: the service first, then
    /// additions and weights, then drains, then removals once every draining
    /// destination is idle or `drain_timeout` has passed (one deadline for all).
    pub async fn sync(
        &mut self,
        service: &Service,
        wanted: &[Backend],
        drain_timeout: Duration,
    ) -> Result<SyncReport, IpvsError> {
        check_families(service, wanted)?;
        self.ensure_service(service).await?;
        let ops = plan(&self.dests(service).await?, wanted);
        let mut report = SyncReport::default();
        let mut removals = Vec::new();
        for op in &ops {
            match op {
                Op::Remove { addr } => {
                    removals.push(*addr);
                    continue;
                }
                Op::Add { .. } => report.added += 1,
                Op::Weight { .. } => report.reweighted += 1,
                Op::Drain { .. } => {}
            }
            self.apply(service, op).await?;
        }
        if removals.is_empty() {
            return Ok(report);
        }
        let deadline = Instant::now() + drain_timeout;
        let busy = loop {
            let busy: Vec<SocketAddr> = self
                .dests(service)
                .await?
                .into_iter()
                .filter(|d| removals.contains(&d.addr) && d.active_conns > 0)
                .map(|d| d.addr)
                .collect();
            if busy.is_empty() || Instant::now() >= deadline {
                break busy;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        report.cut = busy.len();
        for addr in removals {
            match self.apply(service, &Op::Remove { addr }).await {
                // Gone already (removed outside glory): what we wanted.
                Err(e) if e.errno() == Some(ENOENT) => {}
                other => other?,
            }
            report.removed += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;

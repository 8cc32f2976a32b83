//! Enrollment of servers: check the token, decide whether the identity the server claims
//! may be given to it ([`judge_claim`], pure), give it a node id and a group, sign its
//! key. Two live servers claiming one identity with different keys are never merged,
//! and a removed node's identity stays out until an operator re-admits it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::events::{ConflictClaimant, ConflictHolder, EventData};
use glory_keymaster::schema::{
    self, BootstrapScope, BootstrapTokenRecord, NodeRecord, NodeStatus, RECORD_VERSION,
};
use glory_keymaster::{Compare, Txn, TxnOp};
use glory_protocol::{
    CertRole, CertSubject, ClusterToGroup, Enrolled, Inventory, NodeState, Refusal, RefusalCode,
};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::assign::{assign_group, AssignError};
use crate::cluster::{refusal, unavailable, Cluster};
use crate::registry::{NodeEntry, Registry};

/// What an enrollment that claims an identity is, given who holds it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimVerdict {
    /// Nobody holds the identity: a new node.
    New,
    /// The node that holds it enrolls again: with the same key (its agent retrying an
    /// answer it did not get), or after its holder went down or left (a reinstalled
    /// server). It keeps its node id; the old certificate is superseded.
    Again,
    /// A live node holds it with another key: a second server claims to be the first
    /// (a cloned image). Refused; never merged.
    Conflict,
    /// An operator removed the node; it may not come back until re-admitted.
    Removed,
}

/// The holder of an identity as enrollment sees it: the key its certificate was signed
/// for (empty in records older than that field) and its state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder<'a> {
    pub key_sha256: &'a str,
    pub state: NodeState,
}

/// Decide an enrollment claim. Pure: the caller gathers the facts under its lock.
pub(crate) fn judge_claim(
    holder: Option<Holder<'_>>,
    removed: bool,
    key_sha256: &str,
) -> ClaimVerdict {
    if removed {
        return ClaimVerdict::Removed;
    }
    match holder {
        None => ClaimVerdict::New,
        Some(h) if !h.key_sha256.is_empty() && h.key_sha256 == key_sha256 => ClaimVerdict::Again,
        Some(h) if matches!(h.state, NodeState::Down | NodeState::Left) => ClaimVerdict::Again,
        Some(_) => ClaimVerdict::Conflict,
    }
}

/// The same conflict (identity and claimant's key) is reported to operators once in
/// this long, however often the claimant retries.
const CONFLICT_EVENT_EVERY: Duration = Duration::from_secs(300);

/// Identity conflicts already reported, so a retrying clone is one event, not hundreds.
#[derive(Default)]
pub(crate) struct ConflictLog {
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl ConflictLog {
    /// Whether this conflict is news at `now` (and remember it).
    fn first_in_a_while(&self, identity: &str, key: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now.duration_since(*at) < CONFLICT_EVENT_EVERY);
        let key = (identity.to_string(), key.to_string());
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, now);
        true
    }
}

/// The identity an enrollee claims; agents older than the field send only a machine id.
pub(crate) fn claimed_identity(inventory: &Inventory) -> String {
    if inventory.identity.is_empty() {
        format!("machine-id:{}", inventory.machine_id)
    } else {
        inventory.identity.clone()
    }
}

/// A node's addresses for messages to operators (not loopback).
fn addresses_of(inventory: &Inventory) -> String {
    let addrs: Vec<String> = inventory
        .ip_addresses()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect();
    if addrs.is_empty() {
        "no address reported".to_string()
    } else {
        addrs.join(", ")
    }
}

impl Cluster {
    fn node_id_for(registry: &Registry, identity: &str) -> String {
        let digest = hex::encode(Sha256::digest(identity.as_bytes()));
        let base = format!("n-{}", &digest[..12]);
        let mut id = base.clone();
        let mut n = 1;
        while registry
            .nodes
            .get(&id)
            .is_some_and(|e| e.record.identity() != identity)
        {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    /// Refuse a claim on a live node's identity: the message names both servers, and
    /// operators get a `node_identity_conflict` event.
    fn identity_conflict(
        &self,
        identity: &str,
        key: &str,
        holder: &NodeRecord,
        inventory: &Inventory,
        remote: SocketAddr,
    ) -> Refusal {
        let message = format!(
            "identity {identity} is held by live node {} (host {:?}, {}) with another key; \
             refused the enrollment of host {:?} from {remote}. Two servers report one identity \
             (a cloned image?): give each its own (node_name for several agents on one host; see \
             OPERATIONS.md, \"Node identity\") or stop one of them",
            holder.id,
            holder.hostname,
            addresses_of(&holder.inventory),
            inventory.hostname,
        );
        if self
            .conflicts
            .first_in_a_while(identity, key, Instant::now())
        {
            warn!(node_id = %holder.id, %identity, claimant = %remote, "{message}");
            self.events.emit(
                None,
                EventData::NodeIdentityConflict {
                    node: holder.id.clone(),
                    identity: identity.to_string(),
                    holder: ConflictHolder {
                        hostname: holder.hostname.clone(),
                        addresses: addresses_of(&holder.inventory),
                    },
                    claimant: ConflictClaimant {
                        hostname: inventory.hostname.clone(),
                        address: remote.to_string(),
                    },
                },
            );
        }
        refusal(RefusalCode::IdentityConflict, message)
    }

    /// Enroll a server: check the token, give it an id and a group, sign its key.
    /// `remote` is where the enrollment came from (named in refusals).
    pub(crate) async fn enroll_node(
        &self,
        token: &str,
        inventory: Inventory,
        csr_pem: &str,
        remote: SocketAddr,
    ) -> Result<Enrolled, Refusal> {
        let identity = claimed_identity(&inventory);
        if inventory.machine_id.len() > 256 || identity.len() > 300 || identity.ends_with(':') {
            return Err(refusal(
                RefusalCode::BadRequest,
                "inventory.identity must be 1-300 characters (and machine_id at most 256)",
            ));
        }
        let key = glory_protocol::tls::csr_key_sha256(csr_pem)
            .map_err(|e| refusal(RefusalCode::BadRequest, e.to_string()))?;
        let (token_record, token_rev) = self.bootstrap_token(token, BootstrapScope::Node).await?;
        let now = glory_protocol::now_ms();
        // Reserve the node in memory under the lock, so concurrent enrollments see the
        // group sizes (and the identities) including each other.
        let (id, group, previous) = {
            let mut reg = self.write();
            let held = reg
                .identities
                .get(&identity)
                .and_then(|id| reg.nodes.get(id))
                .filter(|n| reg.groups.contains_key(&n.record.group));
            let verdict = judge_claim(
                held.map(|n| Holder {
                    key_sha256: &n.record.key_sha256,
                    state: n.status.state,
                }),
                reg.removed.contains_key(&identity),
                &key,
            );
            match (verdict, held) {
                (ClaimVerdict::Removed, _) => {
                    let removed = &reg.removed[&identity];
                    return Err(refusal(
                        RefusalCode::Removed,
                        format!(
                            "node {} (host {:?}, identity {identity}) was removed by an operator; it \
                             may not enroll again until an operator re-admits it: glory nodes admit {}",
                            removed.node, removed.hostname, removed.node
                        ),
                    ));
                }
                (ClaimVerdict::Conflict, Some(holder)) => {
                    let holder = holder.record.clone();
                    drop(reg);
                    return Err(
                        self.identity_conflict(&identity, &key, &holder, &inventory, remote)
                    );
                }
                (ClaimVerdict::Again, Some(holder)) => {
                    let id = holder.record.id.clone();
                    let group = holder.record.group.clone();
                    (
                        id,
                        group,
                        Some((holder.record.clone(), holder.status.clone())),
                    )
                }
                _ => {
                    let subnets = crate::assign::node_subnets(&inventory);
                    let loads = reg.group_loads();
                    let group = match &token_record.group {
                        // The token says where its nodes go.
                        Some(g) => match loads.iter().find(|l| &l.id == g) {
                            None => {
                                return Err(refusal(
                                    RefusalCode::BadRequest,
                                    format!("the bootstrap token is bound to group {g}, which does not exist"),
                                ))
                            }
                            Some(l) if l.members >= self.settings.group_size_limit => {
                                return Err(refusal(
                                    RefusalCode::NoCapacity,
                                    format!("group {g} (the token's) is full: {} nodes", l.members),
                                ))
                            }
                            Some(_) => g.clone(),
                        },
                        None => assign_group(&loads, &subnets, self.settings.group_size_limit)
                            .map_err(|e| match e {
                                AssignError::NoGroups | AssignError::NoCapacity { .. } => {
                                    refusal(RefusalCode::NoCapacity, e.to_string())
                                }
                            })?,
                    };
                    let id = Self::node_id_for(&reg, &identity);
                    let record = NodeRecord {
                        v: RECORD_VERSION,
                        id: id.clone(),
                        hostname: inventory.hostname.clone(),
                        machine_id: inventory.machine_id.clone(),
                        group: group.clone(),
                        serial: String::new(),
                        previous_serial: String::new(),
                        cert_expires_ms: 0,
                        enrolled_ms: now,
                        inventory: inventory.clone(),
                        labels: Default::default(),
                        server_identity: identity.clone(),
                        key_sha256: key.clone(),
                        // Until its group master says otherwise: the address it enrolled
                        // from (usually the same, so the record is rarely written again).
                        reached_from: Some(remote.ip().to_string()),
                    };
                    let status = NodeStatus::new(NodeState::Joining, now, "enrolled");
                    reg.insert_node(NodeEntry {
                        record,
                        status,
                        load: None,
                        load_ms: 0,
                    });
                    (id, group, None)
                }
            }
        };
        let rollback = |previous: &Option<(NodeRecord, NodeStatus)>| {
            let mut reg = self.write();
            if previous.is_none() {
                reg.remove_node(&id);
            }
        };
        let subject = CertSubject {
            id: id.clone(),
            role: CertRole::Node,
            group: Some(group.clone()),
        };
        let signed = match self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
        {
            Ok(signed) => signed,
            Err(e) => {
                rollback(&previous);
                return Err(refusal(RefusalCode::BadRequest, e.to_string()));
            }
        };
        let mut record = match &previous {
            Some((record, _)) => record.clone(),
            None => self
                .read()
                .nodes
                .get(&id)
                .map(|n| n.record.clone())
                .ok_or_else(|| {
                    refusal(
                        RefusalCode::Unavailable,
                        "node vanished during enrollment (removed concurrently)",
                    )
                })?,
        };
        record.serial = signed.serial.clone();
        // A new enrollment supersedes every certificate the node held before.
        record.previous_serial.clear();
        record.cert_expires_ms = glory_protocol::renewal::CertPeriod::of(&signed.cert_pem)
            .map(|p| p.expires_ms())
            .unwrap_or(0);
        record.hostname = inventory.hostname.clone();
        record.machine_id = inventory.machine_id.clone();
        record.server_identity = identity.clone();
        record.key_sha256 = key;
        record.reached_from = Some(remote.ip().to_string());
        record.inventory = inventory;
        let status = match &previous {
            Some((_, status)) => status.clone(),
            None => NodeStatus::new(NodeState::Joining, now, "enrolled"),
        };
        let mut txn = Txn::default();
        if token_record.single_use {
            let key = schema::bootstrap_token_key(&token_record.id);
            txn.compares
                .push(Compare::mod_revision(key.clone(), token_rev));
            let used = BootstrapTokenRecord {
                used: true,
                ..token_record.clone()
            };
            txn.success.push(TxnOp::put(key, schema::encode(&used)));
        }
        // A removal that raced this enrollment wins: its record must still be absent.
        txn.compares
            .push(Compare::absent(schema::removed_key(&identity)));
        txn.success
            .push(TxnOp::put(schema::node_key(&id), schema::encode(&record)));
        txn.success.push(TxnOp::put(
            schema::node_status_key(&id),
            schema::encode(&status),
        ));
        txn.success.push(TxnOp::put(
            schema::identity_key(&identity),
            id.clone().into_bytes(),
        ));
        // Enrollments arrive in storms: their writes are committed in groups.
        match self.km_txn_grouped(txn).await {
            Ok(resp) if resp.succeeded => {}
            Ok(_) => {
                rollback(&previous);
                let refused = refusal(
                    RefusalCode::BadToken,
                    "bootstrap token rejected: single-use token was already used (or the node was \
                     removed meanwhile)",
                );
                self.boot_token_used(token_record.boot_mac.as_deref(), Err(&refused.message))
                    .await;
                return Err(refused);
            }
            Err(e) => {
                rollback(&previous);
                return Err(unavailable(e));
            }
        }
        let group_masters = {
            let mut reg = self.write();
            let Some(entry) = reg.nodes.get_mut(&id) else {
                return Err(refusal(
                    RefusalCode::Unavailable,
                    "node removed during enrollment",
                ));
            };
            entry.record = record;
            let member = entry.member();
            if let Some(g) = reg.groups.get(&group) {
                g.notify(ClusterToGroup::MemberAdded(member));
            }
            reg.group_master_addrs(&group)
        };
        debug!(node_id = %id, group = %group, reenrolled = previous.is_some(), "node enrolled");
        self.boot_token_used(token_record.boot_mac.as_deref(), Ok(&id))
            .await;
        Ok(Enrolled {
            id,
            group: Some(group),
            group_masters,
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_judged_by_holder_key_and_liveness() {
        use ClaimVerdict::*;
        use NodeState::*;
        let holder = |key: &'static str, state| {
            Some(Holder {
                key_sha256: key,
                state,
            })
        };
        let cases = [
            ("nobody holds it", None, false, New),
            ("removed, nobody holds it", None, true, Removed),
            (
                "same key retrying while joining",
                holder("k1", Joining),
                false,
                Again,
            ),
            ("same key, holder up", holder("k1", Up), false, Again),
            ("other key, holder up", holder("k2", Up), false, Conflict),
            (
                "other key, holder suspect",
                holder("k2", Suspect),
                false,
                Conflict,
            ),
            (
                "other key, holder joining",
                holder("k2", Joining),
                false,
                Conflict,
            ),
            (
                "other key, holder unreachable",
                holder("k2", Unreachable),
                false,
                Conflict,
            ),
            (
                "other key, holder down: reinstalled",
                holder("k2", Down),
                false,
                Again,
            ),
            ("other key, holder left", holder("k2", Left), false, Again),
            (
                "old record without a key, live",
                holder("", Up),
                false,
                Conflict,
            ),
            (
                "old record without a key, down",
                holder("", Down),
                false,
                Again,
            ),
        ];
        for (what, holder, removed, want) in cases {
            assert_eq!(judge_claim(holder, removed, "k1"), want, "{what}");
        }
    }

    #[test]
    fn a_conflict_is_reported_once_in_a_while() {
        let log = ConflictLog::default();
        let t0 = Instant::now();
        assert!(log.first_in_a_while("mac:a", "k2", t0));
        assert!(!log.first_in_a_while("mac:a", "k2", t0 + Duration::from_secs(10)));
        assert!(log.first_in_a_while("mac:a", "k3", t0 + Duration::from_secs(10)));
        assert!(log.first_in_a_while(
            "mac:a",
            "k2",
            t0 + CONFLICT_EVENT_EVERY + Duration::from_secs(1)
        ));
    }
}

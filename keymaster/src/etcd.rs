//! The etcd backend: every [`KeyMaster`] call is one etcd v3 request (through the
//! `etcd-client` crate), so that several processes can share one key space and survive
//! the loss of a minority of etcd members.
//!
//! Behaviour worth knowing:
//! - Requests have a short timeout (2 s by default), so that a request in flight on a
//!   member that dies fails soon with [`KeyMasterError::Unavailable`].
//! - A request that never reached a member (connection refused: the client spreads
//!   requests over all endpoints, dead ones included) is sent again a few times with a
//!   short backoff. Reads and other idempotent calls are also retried while the cluster
//!   briefly has no leader; writes are not, because they may have been applied.
//! - Watches re-create themselves from the first undelivered revision when their
//!   stream breaks; see [`watch`].
//! - Leases count whole seconds: a TTL is rounded up, and etcd raises it to its own
//!   minimum (1.5 election timeouts, rounded up: 2 s with etcd's default settings).
//!   [`KeyMaster::lease_keep_alive`] returns the TTL etcd actually applies.
//! - Elections use etcd's election service (campaign, leader, resign), plus a watch on
//!   our own candidate key: etcd 3.4's campaign keeps waiting after that key is gone.

mod convert;
mod failure;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, ElectionClient, GetOptions, KvClient, LeaseClient, PutOptions,
    ResignOptions, WatchClient,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    rules, EventKind, KeyMaster, KeyMasterError, KeyValue, KmResult, LeaderKey, LeaseId, Revision,
    Txn, TxnOp, TxnResponse, WatchEvent, Watcher,
};
use failure::{Failure, FailureKind};

/// First pause before a request is sent again; it doubles up to [`RETRY_MAX_DELAY`].
const RETRY_START_DELAY: Duration = Duration::from_millis(20);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);
/// Events buffered per watcher between its task and its receiver.
const WATCH_CHANNEL_CAPACITY: usize = 1024;
/// Large prefix reads and watch batches; gRPC's default limit is 4 MiB.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How the backend talks to etcd. The defaults suit a cluster on a local network.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// How long opening a connection to one member may take.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails as unavailable. Campaigning, which
    /// waits for leadership, is exempt.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive pings on open streams (watches, campaigns), so that a dead
    /// connection is noticed. etcd refuses pings more often than every 5 s by default.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
    /// How many times a request is sent in all when it cannot reach a member (or, for
    /// idempotent requests, while the cluster is briefly unavailable).
    pub attempts: u32,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(3),
            attempts: 6,
        }
    }
}

/// Which failures a request may be sent again after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Only failures that prove the request never reached a member (writes).
    Unreachable,
    /// Also a briefly unavailable cluster (reads and other idempotent calls), but not
    /// a timeout, which has already used up the caller's patience.
    Unavailable,
}

/// Anything a request closure may fail with.
trait IntoFailure {
    fn into_failure(self) -> Failure;
}

impl IntoFailure for etcd_client::Error {
    fn into_failure(self) -> Failure {
        Failure::classify(&self)
    }
}

impl IntoFailure for Failure {
    fn into_failure(self) -> Failure {
        self
    }
}

/// The etcd clients, shared with watch tasks.
#[derive(Clone)]
struct Rpc {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    election: ElectionClient,
    /// The election service on a connection without a request timeout: a campaign
    /// waits for as long as somebody else leads.
    campaign: ElectionClient,
    options: EtcdOptions,
}

impl Rpc {
    /// Run `request`, sending it again as `retry` allows.
    async fn call<T, E, F, Fut>(&self, retry: Retry, mut request: F) -> Result<T, Failure>
    where
        E: IntoFailure,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = RETRY_START_DELAY;
        let mut attempt = 1;
        loop {
            let failure = match request().await {
                Ok(answer) => return Ok(answer),
                Err(error) => error.into_failure(),
            };
            let retryable = match failure.kind {
                FailureKind::Unreachable => true,
                FailureKind::Unavailable => retry == Retry::Unavailable,
                _ => false,
            };
            if !retryable || attempt >= self.options.attempts {
                return Err(failure);
            }
            debug!(attempt, error = %failure.message, "etcd request failed; sending it again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX_DELAY);
            attempt += 1;
        }
    }

    /// The store revision right now.
    async fn current_revision(&self) -> Result<Revision, Failure> {
        let answer = self
            .call(Retry::Unavailable, || {
                let mut kv = self.kv.clone();
                async move {
                    kv.get(vec![0u8], Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        convert::header_revision(answer.header())
    }
}

/// The etcd-backed [`KeyMaster`]. Watch tasks stop when it is dropped.
pub struct EtcdKeyMaster {
    rpc: Rpc,
    shutdown: CancellationToken,
}

impl EtcdKeyMaster {
    /// Connect to the etcd cluster at `endpoints` (`http://host:port` or `host:port`)
    /// and check that it answers. Fails with `Unavailable` if no member does within the
    /// request timeout. Must be called inside a tokio runtime.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> KmResult<Arc<Self>> {
        if endpoints.is_empty() {
            return Err(KeyMasterError::Invalid("no etcd endpoints given".into()));
        }
        let base = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout);
        let client = Client::connect(
            endpoints,
            Some(base.clone().with_timeout(options.request_timeout)),
        )
        .await
        .map_err(|e| Failure::classify(&e).into_error("connect", None))?;
        let blocking = Client::connect(endpoints, Some(base))
            .await
            .map_err(|e| Failure::classify(&e).into_error("connect", None))?;
        let rpc = Rpc {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            lease: client.lease_client(),
            election: client.election_client(),
            campaign: blocking.election_client(),
            options,
        };
        // A wrong address or a dead cluster is reported here rather than on first use.
        rpc.current_revision()
            .await
            .map_err(|f| f.into_error("connect", None))?;
        Ok(Arc::new(EtcdKeyMaster {
            rpc,
            shutdown: CancellationToken::new(),
        }))
    }

    /// Which lease made a txn fail with "lease not found": etcd's error does not say.
    async fn missing_lease(&self, txn: &Txn) -> LeaseId {
        let mut leases: Vec<LeaseId> = Vec::new();
        for op in txn.success.iter().chain(&txn.failure) {
            if let TxnOp::Put { lease, .. } = op {
                if *lease != 0 && !leases.contains(lease) {
                    leases.push(*lease);
                }
            }
        }
        if leases.len() > 1 {
            for &lease in &leases {
                let alive = self
                    .rpc
                    .call(Retry::Unavailable, || {
                        let mut client = self.rpc.lease.clone();
                        async move { client.time_to_live(lease, None).await }
                    })
                    .await
                    .map(|answer| answer.ttl() > 0);
                if matches!(alive, Ok(false)) {
                    return lease;
                }
            }
        }
        leases.first().copied().unwrap_or(0)
    }

    /// Wait for a delete of `key` on `watcher`; returns the error that ends the campaign.
    async fn candidate_key_deleted(watcher: &mut Watcher, key: &str) -> KeyMasterError {
        loop {
            match watcher.recv().await {
                Some(Ok(event)) if event.kind == EventKind::Delete && event.kv.key == key => {
                    return KeyMasterError::ElectionLost(format!(
                        "{key} was deleted while campaigning (its lease ended)"
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return error,
                None => {
                    return KeyMasterError::Unavailable(format!(
                        "watch on {key} ended while campaigning"
                    ))
                }
            }
        }
    }
}

impl Drop for EtcdKeyMaster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[async_trait]
impl KeyMaster for EtcdKeyMaster {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> KmResult<Option<KeyValue>> {
        rules::require_key(key)?;
        let answer = self
            .rpc
            .call(Retry::Unavailable, || {
                let mut kv = self.rpc.kv.clone();
                let key = key.as_bytes().to_vec();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|f| f.into_error("get", None))?;
        answer
            .kvs()
            .first()
            .map(convert::key_value)
            .transpose()
            .map_err(|f| f.into_error("get", None))
    }

    async fn get_prefix(&self, prefix: &str) -> KmResult<(Vec<KeyValue>, Revision)> {
        let answer = self
            .rpc
            .call(Retry::Unavailable, || {
                let mut kv = self.rpc.kv.clone();
                let prefix = prefix.as_bytes().to_vec();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|f| f.into_error("get prefix", None))?;
        let read = convert::key_values(answer.kvs())
            .and_then(|kvs| Ok((kvs, convert::header_revision(answer.header())?)));
        read.map_err(|f| f.into_error("get prefix", None))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> KmResult<Revision> {
        rules::require_key(key)?;
        let options = lease
            .filter(|lease| *lease != 0)
            .map(|lease| PutOptions::new().with_lease(lease));
        let answer = self
            .rpc
            .call(Retry::Unreachable, || {
                let mut kv = self.rpc.kv.clone();
                let (key, value, options) =
                    (key.as_bytes().to_vec(), value.clone(), options.clone());
                async move { kv.put(key, value, options).await }
            })
            .await
            .map_err(|f| f.into_error("put", lease))?;
        convert::header_revision(answer.header()).map_err(|f| f.into_error("put", None))
    }

    async fn delete(&self, key: &str) -> KmResult<i64> {
        rules::require_key(key)?;
        let answer = self
            .rpc
            .call(Retry::Unreachable, || {
                let mut kv = self.rpc.kv.clone();
                let key = key.as_bytes().to_vec();
                async move { kv.delete(key, None).await }
            })
            .await
            .map_err(|f| f.into_error("delete", None))?;
        Ok(answer.deleted())
    }

    async fn txn(&self, txn: Txn) -> KmResult<TxnResponse> {
        rules::validate_txn(&txn)?;
        let request = convert::txn(&txn);
        let answer = self
            .rpc
            .call(Retry::Unreachable, || {
                let mut kv = self.rpc.kv.clone();
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) if failure.kind == FailureKind::LeaseNotFound => {
                return Err(KeyMasterError::LeaseNotFound(
                    self.missing_lease(&txn).await,
                ))
            }
            Err(failure) => return Err(failure.into_error("txn", None)),
        };
        let response = (|| {
            let results = answer
                .op_responses()
                .iter()
                .map(convert::op_result)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TxnResponse {
                succeeded: answer.succeeded(),
                revision: convert::header_revision(answer.header())?,
                results,
            })
        })();
        response.map_err(|f: Failure| f.into_error("txn", None))
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> KmResult<Watcher> {
        // As in etcd, a start revision of 0 (or less) means "from now". Pin "now" to a
        // revision so that a watch re-created before its first event misses nothing.
        let from = match start_revision.filter(|rev| *rev > 0) {
            Some(rev) => rev,
            None => {
                self.rpc
                    .current_revision()
                    .await
                    .map_err(|f| f.into_error("watch", None))?
                    + 1
            }
        };
        let prefix = prefix.as_bytes().to_vec();
        let (stream, first) = watch::open(&self.rpc, &prefix, from)
            .await
            .map_err(|f| f.into_error("watch", None))?;
        let (tx, rx) = mpsc::channel::<KmResult<WatchEvent>>(WATCH_CHANNEL_CAPACITY);
        let task = watch::WatchTask {
            rpc: self.rpc.clone(),
            prefix,
            next_revision: from,
            tx,
            shutdown: self.shutdown.child_token(),
        };
        tokio::spawn(task.run(stream, first));
        Ok(Watcher { events: rx })
    }

    async fn lease_grant(&self, ttl: Duration) -> KmResult<LeaseId> {
        rules::check_lease_ttl(ttl)?;
        let whole_seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(whole_seconds)
            .map_err(|_| KeyMasterError::Invalid(format!("lease TTL {ttl:?} is too long")))?;
        let answer = self
            .rpc
            .call(Retry::Unreachable, || {
                let mut lease = self.rpc.lease.clone();
                async move { lease.grant(seconds, None).await }
            })
            .await
            .map_err(|f| f.into_error("lease grant", None))?;
        Ok(answer.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> KmResult<Duration> {
        let timeout = self.rpc.options.request_timeout;
        let ttl = self
            .rpc
            .call(Retry::Unavailable, || {
                let mut client = self.rpc.lease.clone();
                async move {
                    // etcd-client's keep_alive refreshes once but keeps that answer's
                    // TTL to itself; a second refresh on the same stream reports it.
                    let refresh = async {
                        let (mut keeper, mut stream) = client
                            .keep_alive(lease)
                            .await
                            .map_err(|e| e.into_failure())?;
                        keeper.keep_alive().await.map_err(|e| e.into_failure())?;
                        match stream.message().await.map_err(|e| e.into_failure())? {
                            Some(answer) => Ok(answer.ttl()),
                            None => Err(Failure::new(
                                FailureKind::Unavailable,
                                "keep-alive stream ended without an answer",
                            )),
                        }
                    };
                    tokio::time::timeout(timeout, refresh)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Failure::new(FailureKind::TimedOut, "keep-alive timed out"))
                        })
                }
            })
            .await
            .map_err(|f| f.into_error("lease keep-alive", Some(lease)))?;
        match u64::try_from(ttl) {
            Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
            _ => Err(KeyMasterError::LeaseNotFound(lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> KmResult<()> {
        self.rpc
            .call(Retry::Unreachable, || {
                let mut client = self.rpc.lease.clone();
                async move { client.revoke(lease).await }
            })
            .await
            .map_err(|f| f.into_error("lease revoke", Some(lease)))?;
        Ok(())
    }

    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> KmResult<LeaderKey> {
        if election.is_empty() {
            return Err(KeyMasterError::Invalid("empty election name".into()));
        }
        if lease == 0 {
            return Err(KeyMasterError::Invalid("campaigning needs a lease".into()));
        }
        // etcd's campaign writes `{election}/{lease in hex}` and, in 3.4, keeps waiting
        // for its predecessor even after that key is gone. Watch it ourselves so that a
        // lease that ends while we wait ends the campaign, as the kv recipe does.
        let candidate_key = format!("{election}/{lease:x}");
        let mut own_key = self.watch_prefix(&candidate_key, None).await?;
        let campaign = self.rpc.call(Retry::Unreachable, || {
            let mut client = self.rpc.campaign.clone();
            let (name, value) = (election.as_bytes().to_vec(), value.clone());
            async move { client.campaign(name, value, lease).await }
        });
        // Dropping the campaign call cancels it; etcd then withdraws the candidate.
        let answer = tokio::select! {
            answer = campaign => answer.map_err(|f| f.into_error("campaign", Some(lease)))?,
            lost = Self::candidate_key_deleted(&mut own_key, &candidate_key) => return Err(lost),
        };
        let leader = answer.leader().ok_or_else(|| {
            KeyMasterError::Internal("etcd campaign answered without a leader key".into())
        })?;
        let key = String::from_utf8(leader.key().to_vec()).map_err(|e| {
            KeyMasterError::Internal(format!("etcd election key is not UTF-8: {e}"))
        })?;
        Ok(LeaderKey {
            election: election.to_owned(),
            key,
            create_revision: leader.rev(),
            lease: leader.lease(),
        })
    }

    async fn leader(&self, election: &str) -> KmResult<Option<KeyValue>> {
        let answer = self
            .rpc
            .call(Retry::Unavailable, || {
                let mut client = self.rpc.election.clone();
                let name = election.as_bytes().to_vec();
                async move { client.leader(name).await }
            })
            .await;
        match answer {
            Ok(answer) => answer
                .kv()
                .map(convert::key_value)
                .transpose()
                .map_err(|f| f.into_error("leader", None)),
            // etcd answers "election: no leader" as an error, not as an empty answer.
            Err(failure) if failure.kind == FailureKind::NoLeader => Ok(None),
            Err(failure) => Err(failure.into_error("leader", None)),
        }
    }

    async fn resign(&self, leader: &LeaderKey) -> KmResult<()> {
        let key = etcd_client::LeaderKey::new()
            .with_name(leader.election.as_bytes())
            .with_key(leader.key.as_bytes())
            .with_rev(leader.create_revision)
            .with_lease(leader.lease);
        // Idempotent: etcd deletes the key only if it still has our create revision.
        self.rpc
            .call(Retry::Unavailable, || {
                let mut client = self.rpc.election.clone();
                let options = ResignOptions::new().with_leader(key.clone());
                async move { client.resign(Some(options)).await }
            })
            .await
            .map_err(|f| f.into_error("resign", None))?;
        Ok(())
    }
}

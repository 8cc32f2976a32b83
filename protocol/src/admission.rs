//! Admission control for a listening endpoint: at most `in_flight` connections from
//! ordinary peers are served at once, a bounded queue of attempts waits for a free
//! slot, and the rest are refused before any cryptography of theirs is done.
//!
//! Waiting is cheaper than refusing for both sides of an enrollment storm. A waiting
//! client only retransmits its first packet (quinn buffers it; nothing is decrypted
//! again), while a refused one comes back later with a new key share, a new
//! ClientHello and new initial keys to derive, and between the refusal and its retry
//! the server may sit idle. Refusal is kept for attempts that would wait longer than
//! `max_wait` (the client would time out anyway) or find the queue full.
//!
//! The decision is [`Admission`] (`policy.rs`: plain data, `now` passed in); the accept
//! loop here only feeds it arrivals, freed slots and the time, and acts on what it says.

mod policy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::Incoming;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::{Link, LinkEndpoint, ServerLinkConfig};
use crate::transport::serve_incoming;

pub use policy::{Admission, AdmissionStats, Offer, Ready};

/// How many ordinary connections are served at once and how many wait, for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (handshake included).
    pub in_flight: usize,
    /// Attempts held waiting for a slot; beyond this they are refused at once.
    pub queue: usize,
    /// Longest an attempt waits before it is refused. Keep it well under the clients'
    /// connect timeout and QUIC idle timeout, or they give up on an attempt that is
    /// then served for nothing.
    pub max_wait: Duration,
}

impl Limits {
    /// No admission control at all.
    pub const UNLIMITED: Limits = Limits {
        in_flight: usize::MAX,
        queue: 0,
        max_wait: Duration::ZERO,
    };
}

/// Slots freed by served connections' tasks, not yet handed to the [`Admission`]
/// (which only the accept loop touches).
#[derive(Default)]
struct Released {
    slots: AtomicUsize,
    notify: Notify,
}

impl Released {
    fn take(&self) -> usize {
        self.slots.swap(0, Ordering::Relaxed)
    }
}

/// A served connection's slot; freeing it lets the oldest waiting attempt in.
struct Slot(Arc<Released>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_add(1, Ordering::Relaxed);
        self.0.notify.notify_one();
    }
}

/// Log refusals, which must not get a line each in a storm.
fn log_refusal(who: &str, stats: &AdmissionStats) {
    if stats.refused == 1 || stats.refused.is_multiple_of(1000) {
        tracing::info!(
            refused = stats.refused,
            waited_too_long = stats.expired,
            "{who}: busy; refusing connection attempts until those in flight finish"
        );
    }
}

/// [`crate::transport::accept_loop`] with admission control. `privileged` peers (by
/// address, seen before any cryptography) skip the limits: group masters, say, must
/// get through to the cluster master however many servers are enrolling.
///
/// `ordinary` is the server configuration ordinary peers are accepted with (None: the
/// endpoint's). quinn abandons, without a word to the client, an attempt whose first
/// packet is older than the server's idle timeout when it is accepted; the client then
/// waits out its own timeout and starts over. Attempts that may wait `max_wait` in the
/// queue therefore need a configuration whose idle timeout is longer than that, even
/// when the endpoint's own (for long-lived links that must notice a dead peer
/// quickly) is shorter.
pub async fn accept_loop_admitting<P, F, Fut>(
    endpoint: LinkEndpoint,
    shutdown: CancellationToken,
    who: &'static str,
    limits: Limits,
    ordinary: Option<ServerLinkConfig>,
    privileged: P,
    serve: F,
) where
    P: Fn(SocketAddr) -> bool,
    F: Fn(Link) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop_observed(
        endpoint, shutdown, who, limits, ordinary, privileged, serve, None,
    )
    .await
}

/// [`accept_loop_admitting`] that also publishes the admission's [`AdmissionStats`]
/// after every decision (for tests, which wait on them instead of sleeping).
#[allow(clippy::too_many_arguments)]
async fn accept_loop_observed<P, F, Fut>(
    endpoint: LinkEndpoint,
    shutdown: CancellationToken,
    who: &'static str,
    limits: Limits,
    ordinary: Option<ServerLinkConfig>,
    privileged: P,
    serve: F,
    observer: Option<watch::Sender<AdmissionStats>>,
) where
    P: Fn(SocketAddr) -> bool,
    F: Fn(Link) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks = tokio_util::task::TaskTracker::new();
    let released = Arc::new(Released::default());
    let mut admission: Admission<Incoming> = Admission::new(limits);
    let publish = |admission: &Admission<Incoming>| {
        if let Some(observer) = &observer {
            observer.send_replace(admission.stats());
        }
    };
    let spawn = |incoming: Incoming, slot: Option<Slot>| {
        let serve = serve.clone();
        let config = slot.as_ref().and(ordinary.clone());
        tasks.spawn(serve_incoming(
            incoming,
            config,
            shutdown.clone(),
            who,
            move |conn| {
                let fut = serve(conn);
                async move {
                    fut.await;
                    drop(slot);
                }
            },
        ));
    };
    let slot = || Some(Slot(released.clone()));
    loop {
        // Let waiting attempts in while there is room; refuse those that waited too long.
        admission.release(released.take());
        let now = Instant::now().into_std();
        while let Some(ready) = admission.poll(now) {
            // Published before the peer can learn the outcome.
            publish(&admission);
            match ready {
                Ready::Admit(incoming) => spawn(incoming, slot()),
                Ready::Expired(incoming) => {
                    incoming.refuse();
                    log_refusal(who, &admission.stats());
                }
            }
        }
        let deadline = admission.deadline().map(Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = released.notify.notified(), if admission.is_waiting() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            incoming = endpoint.0.accept() => {
                let Some(incoming) = incoming else { break };
                if privileged(incoming.remote_address()) {
                    spawn(incoming, None);
                    continue;
                }
                admission.release(released.take());
                let offer = admission.offer(incoming, Instant::now().into_std());
                publish(&admission);
                match offer {
                    Offer::Admit(incoming) => spawn(incoming, slot()),
                    Offer::Queued => {}
                    Offer::Refuse(incoming) => {
                        incoming.refuse();
                        log_refusal(who, &admission.stats());
                    }
                }
            }
        }
    }
    for incoming in admission.drain() {
        incoming.refuse();
    }
    // Refuse new handshakes from now on: peers retrying to connect would otherwise
    // keep the endpoint (and its address) alive while it shuts down.
    endpoint.stop_accepting();
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClientAuth;
    use crate::transport::{client_config, client_endpoint, connect, server_endpoint, LinkTiming};
    use crate::LinkError;

    struct Rig {
        client: LinkEndpoint,
        config: crate::link::ClientLinkConfig,
        server_name: &'static str,
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        stats: watch::Receiver<AdmissionStats>,
    }

    impl Rig {
        /// A server under `limits` whose connections are served until the peer closes.
        fn start(limits: Limits) -> Rig {
            Rig::start_idle(limits, None, None, None)
        }

        /// [`Rig::start`] with the endpoint's idle timeout, the one ordinary peers are
        /// accepted with, and the client's initial RTT (which spaces its resends) set.
        fn start_idle(
            limits: Limits,
            endpoint_idle: Option<Duration>,
            ordinary_idle: Option<Duration>,
            client_rtt: Option<Duration>,
        ) -> Rig {
            let ids = crate::test_identities::Identities::new();
            let timing = ids.timing;
            let server = server_endpoint(
                "127.0.0.1:0".parse().unwrap(),
                &crate::LiveIdentity::new(ids.server.clone()).unwrap(),
                ClientAuth::Required,
                LinkTiming {
                    idle_timeout: endpoint_idle.unwrap_or(timing.idle_timeout),
                    ..timing
                },
            )
            .unwrap();
            let ordinary = ordinary_idle.map(|idle_timeout| {
                crate::transport::server_config(
                    &crate::LiveIdentity::new(ids.server.clone()).unwrap(),
                    ClientAuth::Required,
                    LinkTiming {
                        idle_timeout,
                        ..timing
                    },
                )
                .unwrap()
            });
            let addr = server.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let (observer, stats) = watch::channel(AdmissionStats::default());
            let task = tokio::spawn(accept_loop_observed(
                server,
                shutdown.clone(),
                "test",
                limits,
                ordinary,
                |_| false,
                |conn: Link| async move {
                    conn.closed().await;
                },
                Some(observer),
            ));
            Rig {
                client: client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap(),
                config: client_config(
                    ids.client.client_tls().unwrap(),
                    LinkTiming {
                        initial_rtt: client_rtt.unwrap_or(timing.initial_rtt),
                        // Connections stay up, holding their slot, until closed.
                        keep_alive: Some(Duration::from_millis(300)),
                        ..timing
                    },
                )
                .unwrap(),
                server_name: ids.server_name,
                addr,
                shutdown,
                task,
                stats,
            }
        }

        /// Wait until the server's admission stats satisfy `what`, or fail naming it
        /// and the stats seen.
        async fn wait_for(
            &self,
            what: &str,
            cond: impl FnMut(&AdmissionStats) -> bool,
        ) -> AdmissionStats {
            let mut stats = self.stats.clone();
            let waited = tokio::time::timeout(Duration::from_secs(5), stats.wait_for(cond))
                .await
                .map(|seen| seen.map(|seen| *seen));
            match waited {
                Ok(Ok(seen)) => seen,
                Ok(Err(_)) => panic!("the accept loop ended before {what}"),
                Err(_) => panic!("expected {what} within 5 s; stats seen: {:?}", self.stats()),
            }
        }

        fn stats(&self) -> AdmissionStats {
            *self.stats.borrow()
        }

        async fn connect(&self) -> Result<Link, LinkError> {
            connect(
                &self.client,
                self.config.clone(),
                self.addr,
                self.server_name,
                Duration::from_secs(4),
            )
            .await
        }

        /// A server with one slot and `queue`/`max_wait` as given, its slot taken by a
        /// first connection (returned).
        async fn one_slot_taken(queue: usize, max_wait: Duration) -> (Rig, Link) {
            let rig = Rig::start(Limits {
                in_flight: 1,
                queue,
                max_wait,
            });
            let first = rig
                .connect()
                .await
                .expect("the first connection is admitted");
            (rig, first)
        }

        async fn stop(self) {
            self.shutdown.cancel();
            let _ = self.task.await;
        }
    }

    #[tokio::test]
    async fn beyond_the_limit_with_no_queue_an_attempt_is_refused_as_busy() {
        let (rig, first) = Rig::one_slot_taken(0, Duration::from_secs(1)).await;
        let second = rig.connect().await.expect_err("the second is refused");
        assert!(second.is_busy(), "{second}");
        assert!(!LinkError::Timeout(Duration::from_secs(1)).is_busy());
        let stats = rig.stats();
        assert_eq!((stats.queued, stats.refused), (0, 1), "{stats:?}");
        first.close(0, "done");
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_waiting_attempt_is_served_when_a_slot_frees() {
        let (rig, first) = Rig::one_slot_taken(4, Duration::from_secs(3)).await;
        let connecting = rig.connect();
        let close_once_queued = async {
            rig.wait_for("the second attempt to wait in the queue", |s| {
                s.waiting == 1
            })
            .await;
            first.close(0, "done");
        };
        let (second, ()) = tokio::join!(connecting, close_once_queued);
        let second = second.expect("the second waits for the first's slot, then is served");
        let stats = rig.stats();
        assert_eq!(
            (stats.queued, stats.admitted_from_queue, stats.refused),
            (1, 1, 0),
            "{stats:?}"
        );
        second.close(0, "done");
        rig.stop().await;
    }

    /// An attempt that waited in the queue for longer than the endpoint's idle timeout
    /// (1 s here) is served as soon as its slot frees. quinn would abandon it without
    /// an answer if it were accepted with the endpoint's configuration; the client
    /// (100 ms initial RTT) would then get through only with the resend it makes 4.5 s
    /// after its first packet, past its 4 s connect timeout.
    #[tokio::test]
    async fn an_attempt_that_waited_longer_than_the_idle_timeout_is_still_served() {
        let limits = Limits {
            in_flight: 1,
            queue: 4,
            max_wait: Duration::from_secs(3),
        };
        let endpoint_idle = Duration::from_secs(1);
        let rig = Rig::start_idle(
            limits,
            Some(endpoint_idle),
            Some(Duration::from_secs(5)),
            Some(crate::transport::STORM_INITIAL_RTT),
        );
        let first = rig.connect().await.expect("the first is admitted");
        let connecting = rig.connect();
        // The wait is what is tested: the slot frees 2.5 s after the attempt was
        // queued, well past the endpoint's idle timeout.
        let close_late = async {
            rig.wait_for("the second attempt to wait in the queue", |s| {
                s.waiting == 1
            })
            .await;
            let queued = Instant::now();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            first.close(0, "done");
            queued
        };
        let (second, queued) = tokio::join!(connecting, close_late);
        let second = second.expect("the attempt that waited 2.5 s for its slot is served");
        assert!(queued.elapsed() > endpoint_idle);
        let stats = rig.stats();
        assert_eq!(
            (stats.queued, stats.admitted_from_queue, stats.refused),
            (1, 1, 0),
            "{stats:?}"
        );
        second.close(0, "done");
        rig.stop().await;
    }

    #[tokio::test]
    async fn an_attempt_that_waits_too_long_is_refused_as_busy() {
        let (rig, first) = Rig::one_slot_taken(4, Duration::from_millis(300)).await;
        let second = rig.connect().await.expect_err("the slot never frees");
        assert!(second.is_busy(), "{second}");
        let stats = rig.stats();
        assert_eq!(
            (stats.queued, stats.expired, stats.refused),
            (1, 1, 1),
            "the attempt waited in the queue, then was refused: {stats:?}"
        );
        first.close(0, "done");
        rig.stop().await;
    }
}

//! What went wrong in an etcd call, and whether it is worth trying again.
//!
//! etcd-client reports everything as one error type: gRPC statuses from the server
//! (with etcd's own messages such as "etcdserver: requested lease not found"), transport
//! failures from tonic, and a few errors of its own. [`Failure`] sorts them into what a
//! caller of the [`KeyMaster`](crate::KeyMaster) can act on.

use std::error::Error as _;

use tonic::Code;

use crate::{KeyMasterError, LeaseId};

/// The kinds of failure the backend tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// The request never reached a member (connection refused, no route): always safe
    /// to send again, even a write.
    Unreachable,
    /// The member was reached but could not answer (no leader, timeout, connection
    /// lost mid-request). A write may or may not have been applied.
    Unavailable,
    /// The request hit the client timeout: trying again would only double the wait.
    TimedOut,
    /// etcd does not know the lease.
    LeaseNotFound,
    /// The election has no leader (etcd's Leader call answers this with an error).
    NoLeader,
    /// The election key was lost while campaigning or proclaiming.
    NotLeader,
    /// etcd refused the request as malformed or too large.
    Invalid,
    /// Anything else.
    Internal,
}

/// One failed etcd call: its kind and a message for the logs and the caller.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// Messages (of the status or of any error in its source chain) that mean the
/// connection could not be opened at all.
const UNREACHABLE_MARKERS: &[&str] = &[
    "tcp connect error",
    "error trying to connect",
    "connection refused",
    "client error (connect)",
];

/// Messages of statuses with a vague code that mean the transport broke.
const TRANSPORT_MARKERS: &[&str] = &[
    "transport error",
    "connection reset",
    "broken pipe",
    "error reading a body",
    "h2 protocol error",
    "connection closed",
    "operation was canceled",
];

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// Sort an etcd-client error into a kind, keeping the whole error text.
    pub fn classify(error: &etcd_client::Error) -> Self {
        let text = error_chain_text(error);
        let lower = text.to_lowercase();
        let kind = if UNREACHABLE_MARKERS.iter().any(|m| lower.contains(m)) {
            FailureKind::Unreachable
        } else {
            match error {
                etcd_client::Error::GRpcStatus(status) => classify_status(status.code(), &lower),
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                    FailureKind::Unavailable
                }
                // etcd-client's own message when a keep-alive answers with TTL 0.
                etcd_client::Error::LeaseKeepAliveError(message)
                    if message.contains("lease not found") =>
                {
                    FailureKind::LeaseNotFound
                }
                // A stream that ended before its first answer: the connection broke.
                etcd_client::Error::LeaseKeepAliveError(_) | etcd_client::Error::WatchError(_) => {
                    FailureKind::Unavailable
                }
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                    FailureKind::Invalid
                }
                _ => FailureKind::Internal,
            }
        };
        Failure {
            kind,
            message: text,
        }
    }

    /// The caller-facing error; `lease` names the lease for `LeaseNotFound`.
    pub fn into_error(self, what: &str, lease: Option<LeaseId>) -> KeyMasterError {
        let message = format!("etcd {what}: {}", self.message);
        match self.kind {
            FailureKind::Unreachable | FailureKind::Unavailable | FailureKind::TimedOut => {
                KeyMasterError::Unavailable(message)
            }
            FailureKind::LeaseNotFound => match lease {
                Some(lease) => KeyMasterError::LeaseNotFound(lease),
                None => KeyMasterError::Internal(message),
            },
            FailureKind::NotLeader => KeyMasterError::ElectionLost(message),
            FailureKind::Invalid => KeyMasterError::Invalid(message),
            FailureKind::NoLeader | FailureKind::Internal => KeyMasterError::Internal(message),
        }
    }
}

fn classify_status(code: Code, lower: &str) -> FailureKind {
    if lower.contains("requested lease not found") {
        return FailureKind::LeaseNotFound;
    }
    // concurrency.ErrElectionNoLeader and ErrElectionNotLeader travel as plain errors.
    if lower.contains("election: no leader") {
        return FailureKind::NoLeader;
    }
    if lower.contains("election: not leader") || lower.contains("election: session expired") {
        return FailureKind::NotLeader;
    }
    if lower.contains("timeout expired") {
        return FailureKind::TimedOut;
    }
    match code {
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
            FailureKind::Unavailable
        }
        Code::DeadlineExceeded => FailureKind::TimedOut,
        Code::InvalidArgument | Code::OutOfRange => FailureKind::Invalid,
        Code::Unknown | Code::Internal if TRANSPORT_MARKERS.iter().any(|m| lower.contains(m)) => {
            FailureKind::Unavailable
        }
        _ => FailureKind::Internal,
    }
}

/// The error's message followed by the messages of its sources: tonic puts the useful
/// part ("tcp connect error", "Connection refused") in the source chain.
fn error_chain_text(error: &etcd_client::Error) -> String {
    let mut text = error.to_string();
    let mut source = match error {
        etcd_client::Error::GRpcStatus(status) => status.source(),
        other => other.source(),
    };
    while let Some(inner) = source {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of_status(code: Code, message: &str) -> FailureKind {
        Failure::classify(&etcd_client::Error::GRpcStatus(tonic::Status::new(
            code, message,
        )))
        .kind
    }

    #[test]
    fn etcd_statuses_are_sorted_by_meaning() {
        let cases = [
            (
                Code::NotFound,
                "etcdserver: requested lease not found",
                FailureKind::LeaseNotFound,
            ),
            (Code::Unknown, "election: no leader", FailureKind::NoLeader),
            (
                Code::Unknown,
                "election: not leader",
                FailureKind::NotLeader,
            ),
            (
                Code::Unavailable,
                "etcdserver: leader changed",
                FailureKind::Unavailable,
            ),
            (
                Code::Unavailable,
                "tcp connect error: Connection refused (os error 111)",
                FailureKind::Unreachable,
            ),
            (Code::Cancelled, "Timeout expired", FailureKind::TimedOut),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
                FailureKind::Invalid,
            ),
            (
                Code::Unknown,
                "h2 protocol error: error reading a body from connection",
                FailureKind::Unavailable,
            ),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied",
                FailureKind::Internal,
            ),
        ];
        for (code, message, expected) in cases {
            assert_eq!(
                kind_of_status(code, message),
                expected,
                "{code:?} {message}"
            );
        }
    }

    #[test]
    fn lease_errors_name_the_lease() {
        let failure = Failure::new(FailureKind::LeaseNotFound, "gone");
        assert_eq!(
            failure.into_error("put", Some(7)),
            KeyMasterError::LeaseNotFound(7)
        );
        let failure = Failure::new(FailureKind::TimedOut, "slow");
        assert!(matches!(
            failure.into_error("get", None),
            KeyMasterError::Unavailable(_)
        ));
    }
}

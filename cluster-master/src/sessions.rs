//! Console sessions: signing in with an API token or a user's password gives a session
//! id (the `glory_session` cookie, HttpOnly, SameSite=Strict) and a CSRF token that every
//! change made with the cookie must carry in `X-CSRF-Token`. Sessions live in the active
//! cluster master's memory: after a failover, operators sign in again.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a session lasts after sign-in.
pub const SESSION_TTL_MS: u64 = 8 * 3600 * 1000;
/// Most sessions at once; the one closest to expiry goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// Who a session acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// `operator`, `tenant` or `component`.
    pub role: String,
    pub tenant: Option<String>,
    /// The user who signed in (None: signed in with an API token).
    pub user: Option<String>,
    /// The API token's id it was made from, if any (revoking the token ends it).
    pub token_id: Option<String>,
    pub csrf: String,
    pub expires_ms: u64,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// Open a session; returns its id.
    pub fn open(
        &self,
        role: &str,
        tenant: Option<String>,
        user: Option<String>,
        token_id: Option<String>,
        now_ms: u64,
    ) -> (String, Session) {
        let session = Session {
            role: role.to_string(),
            tenant,
            user,
            token_id,
            csrf: random_hex(),
            expires_ms: now_ms + SESSION_TTL_MS,
        };
        let id = random_hex();
        let mut all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.expires_ms > now_ms);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(id, _)| id.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The session `id` while it lasts.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<Session> {
        let mut all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(id) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                all.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) -> bool {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let (id, session) = s.open("operator", None, Some("ann".into()), None, 1000);
        assert_eq!(session.csrf.len(), 64);
        assert_eq!(s.get(&id, 2000).unwrap().user.as_deref(), Some("ann"));
        assert!(s.get(&id, 1000 + SESSION_TTL_MS).is_none(), "expired");
        let (id, _) = s.open("tenant", Some("t".into()), None, None, 1000);
        assert!(s.close(&id));
        assert!(s.get(&id, 2000).is_none());
        assert!(!s.close(&id));
    }
}

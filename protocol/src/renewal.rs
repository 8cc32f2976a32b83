//! Certificates that renew.
//!
//! Every certificate the cluster CA signs for a link (nodes, group masters,
//! provisioners, cluster masters) lives the cluster master's `cert_lifetime` (24 h by
//! default). Its holder asks for the next one, for a fresh key, at about two thirds of
//! its life over the link it already has, each holder at its own point of a window of a
//! sixth of the life, so that 10,000 nodes enrolled in the same minute do not all ask
//! in the same second. A stolen key is good for one lifetime at most.
//!
//! [`Renewer`] is the holder's side (when to ask, the key it asked for, taking the
//! answer); [`LiveIdentity`] and [`CertSlot`] let a server present the new
//! certificate to the connections that come after, while open ones keep theirs.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::tls::{csr_key_sha256, generate_csr, pem_chain, pem_key, provider, TlsError};
use crate::{ClientAuth, TlsIdentity};

/// Certificates are valid from this long before they are signed, for clocks that run
/// behind the cluster master's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(600);

/// The shortest lifetime the cluster master accepts for the certificates it signs.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Holders ask for their next certificate at this fraction of its life...
pub const RENEW_AT: f64 = 2.0 / 3.0;
/// ... moved earlier or later by up to this fraction, each holder by its own amount.
pub const RENEW_SPREAD: f64 = 1.0 / 12.0;

/// When a certificate was issued and when it expires, seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertPeriod {
    pub issued_s: u64,
    pub expires_s: u64,
}

impl CertPeriod {
    /// The period of the first (leaf) certificate of a PEM chain.
    pub fn of(cert_pem: &str) -> Result<Self, TlsError> {
        with_leaf(cert_pem, |leaf| {
            let validity = leaf.validity();
            let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
            let expires_s = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
            CertPeriod {
                issued_s: (not_before + CLOCK_SKEW.as_secs()).min(expires_s),
                expires_s,
            }
        })
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_s.saturating_sub(self.issued_s))
    }

    pub fn expires_ms(&self) -> u64 {
        self.expires_s.saturating_mul(1000)
    }

    /// Whether the certificate has expired at `now_s`.
    pub fn expired(&self, now_s: u64) -> bool {
        now_s >= self.expires_s
    }

    /// When to ask for the next certificate, seconds since the epoch: at [`RENEW_AT`]
    /// of the life, moved by `spread` (0 to 1) across a window of twice
    /// [`RENEW_SPREAD`].
    pub fn renew_at_s(&self, spread: f64) -> f64 {
        let life = self.lifetime().as_secs_f64();
        let fraction = RENEW_AT + RENEW_SPREAD * (2.0 * spread.clamp(0.0, 1.0) - 1.0);
        self.issued_s as f64 + life * fraction
    }
}

/// How long to wait before asking again when a request went unanswered: a twentieth
/// of the life, between 5 s and 10 min.
pub fn retry_after(lifetime: Duration) -> Duration {
    (lifetime / 20).clamp(Duration::from_secs(5), Duration::from_secs(600))
}

fn now_s_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `Instant` at wall-clock time `at_s` (now if it has passed).
fn instant_at(at_s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64((at_s - now_s_f64()).max(0.0))
}

/// Hex SHA-256 of the public key a certificate (the leaf of a chain) is for.
pub fn cert_key_sha256(cert_pem: &str) -> Result<String, TlsError> {
    with_leaf(cert_pem, |leaf| {
        hex::encode(Sha256::digest(&leaf.public_key().subject_public_key.data))
    })
}

/// `f` of the first (leaf) certificate of a PEM chain, parsed.
fn with_leaf<T>(
    cert_pem: &str,
    f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T, TlsError> {
    let leaf = pem_chain(cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no certificate".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::Pem(format!("certificate does not parse: {e}")))?;
    Ok(f(&parsed))
}

/// A holder's side of renewal: when to ask, the key it asked for (one key for every
/// retry), and taking the answer.
pub struct Renewer {
    period: CertPeriod,
    /// This holder's place in the renewal window (0 to 1).
    spread: f64,
    due: Instant,
    /// The key asked for: `(key_pem, csr_pem, key_sha256)`.
    pending: Option<(String, String, String)>,
}

impl Renewer {
    /// For the certificate we hold, at a random place in the window.
    pub fn new(cert_pem: &str) -> Result<Self, TlsError> {
        Self::with_spread(cert_pem, rand::random::<f64>())
    }

    pub fn with_spread(cert_pem: &str, spread: f64) -> Result<Self, TlsError> {
        let period = CertPeriod::of(cert_pem)?;
        Ok(Renewer {
            period,
            spread,
            due: instant_at(period.renew_at_s(spread)),
            pending: None,
        })
    }

    /// When to ask next.
    pub fn due(&self) -> Instant {
        self.due
    }

    pub fn period(&self) -> CertPeriod {
        self.period
    }

    /// The request to send now: a CSR for a fresh key (the same one until its
    /// certificate comes back). Asks again after [`retry_after`] if nothing arrives.
    pub fn request(&mut self) -> Result<String, TlsError> {
        self.due = Instant::now() + retry_after(self.period.lifetime());
        if self.pending.is_none() {
            let (key_pem, csr_pem) = generate_csr()?;
            let key_sha = csr_key_sha256(&csr_pem)?;
            self.pending = Some((key_pem, csr_pem, key_sha));
        }
        Ok(self
            .pending
            .as_ref()
            .map(|p| p.1.clone())
            .unwrap_or_default())
    }

    /// The certificate signed for our pending key: the identity to hold from now on.
    /// A certificate for another key (an answer to an older request) is refused.
    pub fn accept(
        &mut self,
        current: &TlsIdentity,
        cert_pem: &str,
    ) -> Result<TlsIdentity, TlsError> {
        let Some((key_pem, _, key_sha)) = &self.pending else {
            return Err(TlsError::Verifier(
                "a certificate arrived that was not asked for".into(),
            ));
        };
        if &cert_key_sha256(cert_pem)? != key_sha {
            return Err(TlsError::Verifier(
                "the certificate is not for the key we asked with".into(),
            ));
        }
        let period = CertPeriod::of(cert_pem)?;
        let identity = TlsIdentity {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.clone(),
            ca_pem: current.ca_pem.clone(),
        };
        // Refuse what a server could not load.
        certified_key(&identity.cert_pem, &identity.key_pem)?;
        self.pending = None;
        self.period = period;
        self.due = instant_at(period.renew_at_s(self.spread));
        Ok(identity)
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = pem_chain(cert_pem)?;
    if chain.is_empty() {
        return Err(TlsError::Pem("no certificate".into()));
    }
    let key = provider()
        .key_provider
        .load_private_key(pem_key(key_pem)?)?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// The certificate a TLS server presents, replaceable while it serves.
#[derive(Clone)]
pub struct CertSlot(Arc<RwLock<Arc<CertifiedKey>>>);

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertSlot")
    }
}

impl CertSlot {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(CertSlot(Arc::new(RwLock::new(certified_key(
            cert_pem, key_pem,
        )?))))
    }

    /// Present this certificate from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// The resolver a rustls server configuration takes.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(self.clone())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A participant's identity as its servers present it and its clients dial with,
/// replaceable when its certificate is renewed.
#[derive(Clone, Debug)]
pub struct LiveIdentity {
    current: Arc<RwLock<TlsIdentity>>,
    slot: CertSlot,
}

impl LiveIdentity {
    pub fn new(identity: TlsIdentity) -> Result<Self, TlsError> {
        let slot = CertSlot::new(&identity.cert_pem, &identity.key_pem)?;
        Ok(LiveIdentity {
            current: Arc::new(RwLock::new(identity)),
            slot,
        })
    }

    /// The identity now (for dialling, for saving).
    pub fn current(&self) -> TlsIdentity {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hold `identity` from now on: new handshakes present its certificate.
    pub fn replace(&self, identity: TlsIdentity) -> Result<(), TlsError> {
        self.slot.replace(&identity.cert_pem, &identity.key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = identity;
        Ok(())
    }

    /// A rustls server configuration that presents whatever certificate is current.
    pub fn server_tls(&self, client_auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
        self.current()
            .server_tls_with(client_auth, self.slot.resolver())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertRole, CertSubject, ClusterCa};

    fn subject() -> CertSubject {
        CertSubject {
            id: "n-1".into(),
            role: CertRole::Node,
            group: Some("g00".into()),
        }
    }

    #[test]
    fn renewal_falls_in_its_window_and_takes_only_its_own_key() {
        let ca = ClusterCa::generate("t").unwrap();
        let life = Duration::from_secs(3600);
        let (identity, _) = ca.issue(&subject(), life).unwrap();
        let period = CertPeriod::of(&identity.cert_pem).unwrap();
        assert_eq!(period.lifetime(), life);
        let issued = period.issued_s as f64;
        assert_eq!(period.renew_at_s(0.5), issued + 2400.0);
        assert_eq!(period.renew_at_s(0.0), issued + 2100.0);
        assert_eq!(period.renew_at_s(1.0), issued + 2700.0);
        assert!(!period.expired(period.issued_s) && period.expired(period.expires_s));

        let mut renewer = Renewer::with_spread(&identity.cert_pem, 0.5).unwrap();
        let wait = renewer.due().saturating_duration_since(Instant::now());
        assert!(wait > Duration::from_secs(2390) && wait <= Duration::from_secs(2400));
        // Nothing asked for: nothing taken.
        assert!(renewer.accept(&identity, &identity.cert_pem).is_err());
        let csr = renewer.request().unwrap();
        assert_eq!(renewer.request().unwrap(), csr, "one key for every retry");
        assert!(renewer.due() <= Instant::now() + retry_after(life));
        // A certificate for another key (the old one) is refused.
        assert!(renewer.accept(&identity, &identity.cert_pem).is_err());
        let signed = ca.sign_csr(&csr, &subject(), life).unwrap();
        let renewed = renewer.accept(&identity, &signed.cert_pem).unwrap();
        assert_ne!(renewed.key_pem, identity.key_pem);
        assert_eq!(renewed.ca_pem, identity.ca_pem);
        assert!(renewer.due() > Instant::now() + Duration::from_secs(2000));
        // A server presents the new certificate once replaced.
        let live = LiveIdentity::new(identity.clone()).unwrap();
        live.server_tls(ClientAuth::Required).unwrap();
        live.replace(renewed.clone()).unwrap();
        assert_eq!(live.current(), renewed);
        // A mismatched key and certificate never reach a server.
        let mut wrong = renewed.clone();
        wrong.key_pem = identity.key_pem.clone();
        assert!(live.replace(wrong).is_err());
        assert_eq!(live.current(), renewed);
    }

    #[test]
    fn retries_are_bounded() {
        assert_eq!(retry_after(Duration::from_secs(60)), Duration::from_secs(5));
        assert_eq!(
            retry_after(Duration::from_secs(24 * 3600)),
            Duration::from_secs(600)
        );
        assert_eq!(
            retry_after(Duration::from_secs(3600)),
            Duration::from_secs(180)
        );
    }
}

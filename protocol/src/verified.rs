//! Server certificate chains this process has already verified.
//!
//! A client checks two signatures in every handshake: the CA's over the server's
//! certificate (the chain), and the server's over this handshake (CertificateVerify).
//! Only the second is about this connection. A process that connects again and again
//! to the same few servers, such as the simulated fleet (10,000 agents in one process,
//! 40 group masters and a cluster master), would verify the same chain 20,000 times;
//! here it verifies each chain once and remembers that it did, until the chain's
//! certificates expire. The handshake signature is still verified every time.
//!
//! A remembered chain is keyed by the trust anchors it was checked against, the
//! server name and every certificate's bytes, so it is taken as verified only for
//! exactly what was verified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Chains remembered per process; when full, the memory starts over (a process talks
/// to a few dozen servers, so this only bounds a misbehaving peer that keeps changing
/// its certificate).
const CAPACITY: usize = 1024;

/// When every certificate of a verified chain is valid, in seconds since the epoch.
#[derive(Clone, Copy, Debug)]
struct Validity {
    not_before: u64,
    not_after: u64,
}

fn remembered() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], Validity>> {
    static CHAINS: OnceLock<Mutex<HashMap<[u8; 32], Validity>>> = OnceLock::new();
    CHAINS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SHA-256 naming a set of trust anchors (or a pinning rule) for [`Remembering`].
pub(crate) fn anchors_id<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The intersection of the validity periods of `certs`; `None` if one does not parse.
fn chain_validity<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> Option<Validity> {
    let mut validity = Validity {
        not_before: 0,
        not_after: u64::MAX,
    };
    for cert in certs {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let period = parsed.validity();
        let not_before = u64::try_from(period.not_before.timestamp()).unwrap_or(0);
        let not_after = u64::try_from(period.not_after.timestamp()).ok()?;
        validity.not_before = validity.not_before.max(not_before);
        validity.not_after = validity.not_after.min(not_after);
    }
    Some(validity)
}

/// A [`ServerCertVerifier`] that asks `inner` about a chain only the first time this
/// process sees it (and again once it has expired); handshake signatures always go to
/// `inner`.
#[derive(Debug)]
pub(crate) struct Remembering {
    inner: Arc<dyn ServerCertVerifier>,
    /// What `inner` verifies against ([`anchors_id`]): a chain verified against one CA
    /// is never taken as verified against another.
    anchors: [u8; 32],
}

impl Remembering {
    pub(crate) fn new(inner: Arc<dyn ServerCertVerifier>, anchors: [u8; 32]) -> Arc<Self> {
        Arc::new(Remembering { inner, anchors })
    }

    fn key(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> [u8; 32] {
        let name = format!("{server_name:?}");
        let mut parts: Vec<&[u8]> = vec![&self.anchors, name.as_bytes(), end_entity.as_ref()];
        parts.extend(intermediates.iter().map(|c| c.as_ref()));
        anchors_id(parts)
    }
}

impl ServerCertVerifier for Remembering {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = self.key(end_entity, intermediates, server_name);
        let at = now.as_secs();
        if let Some(validity) = remembered().get(&key) {
            if validity.not_before <= at && at <= validity.not_after {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(validity) = chain_validity(std::iter::once(end_entity).chain(intermediates)) {
            let mut chains = remembered();
            if chains.len() >= CAPACITY {
                chains.clear();
            }
            chains.insert(key, validity);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::tls::{pem_to_der, CertRole, CertSubject, ClusterCa, GROUP_MASTER_NAME};

    /// Counts the chains it is asked about and hands them to webpki.
    #[derive(Debug)]
    struct Counting {
        webpki: Arc<dyn ServerCertVerifier>,
        chains: AtomicUsize,
    }

    impl ServerCertVerifier for Counting {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.chains.fetch_add(1, Ordering::SeqCst);
            self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.webpki.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.webpki.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.webpki.supported_verify_schemes()
        }
    }

    fn counting(ca: &ClusterCa) -> Arc<Counting> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_to_der(ca.cert_pem()).unwrap()).unwrap();
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        Arc::new(Counting {
            webpki,
            chains: AtomicUsize::new(0),
        })
    }

    /// A group master's chain `[leaf, ca]` from `ca`, valid for `validity`.
    fn chain(ca: &ClusterCa, validity: Duration) -> Vec<CertificateDer<'static>> {
        let subject = CertSubject {
            id: "g1".into(),
            role: CertRole::GroupMaster,
            group: None,
        };
        let (identity, _) = ca.issue(&subject, validity).unwrap();
        vec![
            pem_to_der(&identity.cert_pem).unwrap(),
            pem_to_der(ca.cert_pem()).unwrap(),
        ]
    }

    fn verify(
        verifier: &Remembering,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(GROUP_MASTER_NAME).unwrap();
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
    }

    #[test]
    fn a_chain_is_verified_once_per_trust_anchors() {
        let ca = ClusterCa::generate("remembered").unwrap();
        let chain = chain(&ca, Duration::from_secs(3600));
        let inner = counting(&ca);
        let verifier = Remembering::new(inner.clone(), anchors_id([b"a".as_slice()]));
        let now = UnixTime::now();
        verify(&verifier, &chain, now).unwrap();
        verify(&verifier, &chain, now).unwrap();
        assert_eq!(
            inner.chains.load(Ordering::SeqCst),
            1,
            "second check remembered"
        );
        // The same chain checked against other anchors is verified again.
        let other = Remembering::new(inner.clone(), anchors_id([b"b".as_slice()]));
        verify(&other, &chain, now).unwrap();
        assert_eq!(inner.chains.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_expired_chain_is_verified_again_and_refused() {
        let ca = ClusterCa::generate("expiring").unwrap();
        let chain = chain(&ca, Duration::from_secs(3600));
        let inner = counting(&ca);
        let verifier = Remembering::new(inner.clone(), anchors_id([b"c".as_slice()]));
        verify(&verifier, &chain, UnixTime::now()).unwrap();
        let later = UnixTime::since_unix_epoch(
            Duration::from_secs(UnixTime::now().as_secs()) + Duration::from_secs(2 * 3600),
        );
        assert!(
            verify(&verifier, &chain, later).is_err(),
            "expired chain accepted"
        );
        assert_eq!(inner.chains.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_refused_chain_is_not_remembered() {
        let trusted = ClusterCa::generate("trusted").unwrap();
        let stranger = ClusterCa::generate("stranger").unwrap();
        let chain = chain(&stranger, Duration::from_secs(3600));
        let inner = counting(&trusted);
        let verifier = Remembering::new(inner.clone(), anchors_id([b"d".as_slice()]));
        let now = UnixTime::now();
        assert!(verify(&verifier, &chain, now).is_err());
        assert!(verify(&verifier, &chain, now).is_err());
        assert_eq!(inner.chains.load(Ordering::SeqCst), 2);
    }
}

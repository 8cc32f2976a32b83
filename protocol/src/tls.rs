//! The cluster CA and the mutual-TLS configuration of every QUIC link.
//!
//! Certificates carry identity in the subject: `CN` = node or group id, `OU` = role
//! (`node`, `group-master`, `cluster-master`) and, for nodes, `O` = the node's group.
//! Masters' certificates also carry the DNS names that clients use as server name
//! ([`CLUSTER_MASTER_NAME`], [`GROUP_MASTER_NAME`]), so a client verifies the role of
//! the server it reached whatever address it dialled.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::verified::{anchors_id, Remembering};

/// Application protocol negotiated on every link.
pub const ALPN: &[u8] = b"glory/1";
/// Server name every cluster master certificate carries.
pub const CLUSTER_MASTER_NAME: &str = "cluster-master.glory";
/// Server name every group master certificate carries.
pub const GROUP_MASTER_NAME: &str = "group-master.glory";

/// Role written into a certificate's OU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    Node,
    GroupMaster,
    ClusterMaster,
    /// A provisioner serving a boot network (DHCP, TFTP, HTTP boot).
    Provisioner,
}

impl CertRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Node => "node",
            CertRole::GroupMaster => "group-master",
            CertRole::ClusterMaster => "cluster-master",
            CertRole::Provisioner => "provisioner",
        }
    }
    fn parse(s: &str) -> Option<CertRole> {
        [
            CertRole::Node,
            CertRole::GroupMaster,
            CertRole::ClusterMaster,
            CertRole::Provisioner,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid pem: {0}")]
    Pem(String),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("tls verifier: {0}")]
    Verifier(String),
}

/// ring's provider with TLS_AES_128_GCM_SHA256 preferred (both ends use this, so it is
/// what every link negotiates). rustls lists AES-256-GCM-SHA384 first: its key schedule
/// runs HKDF on SHA-384, which has no hardware help here and took 5% of the masters' CPU
/// while 10,000 nodes enrolled, and AES-256 costs more per packet. AES-128-GCM is the
/// suite every QUIC stack must support (RFC 9001).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Hex SHA-256 of a certificate in DER, as operators pin it (`ca_cert_hash`).
pub fn cert_sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The first certificate of a PEM string, in DER.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    pem_chain(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no certificate".into()))
}

pub(crate) fn pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

pub(crate) fn pem_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

pub(crate) fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, as DER integers must be
    bytes[0] |= 0x01; // no leading zero byte, so the hex form is stable
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// What a certificate asserts.
#[derive(Clone, Debug)]
pub struct CertSubject {
    pub id: String,
    pub role: CertRole,
    pub group: Option<String>,
}

/// A certificate signed by the CA, with its serial.
#[derive(Clone, Debug)]
pub struct SignedCert {
    pub cert_pem: String,
    pub serial: String,
}

/// Key, certificate and trusted CA of one participant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsIdentity {
    /// Our certificate followed by the CA certificate.
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// The cluster's certificate authority. Only cluster masters hold one.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// A fresh self-signed CA.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("GLORY-CL cluster CA {cluster_name}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Load a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate, for agents to pin before their first enrollment.
    pub fn cert_hash(&self) -> Result<String, TlsError> {
        Ok(cert_sha256_hex(pem_to_der(&self.cert_pem)?.as_ref()))
    }

    fn params_for(subject: &CertSubject, validity: Duration) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.id.clone());
        dn.push(DnType::OrganizationalUnitName, subject.role.as_str());
        if let Some(group) = &subject.group {
            dn.push(DnType::OrganizationName, group.clone());
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let dns = match subject.role {
            CertRole::Node | CertRole::Provisioner => None,
            CertRole::GroupMaster => Some(GROUP_MASTER_NAME),
            CertRole::ClusterMaster => Some(CLUSTER_MASTER_NAME),
        };
        if let Some(name) = dns {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            if let Ok(san) = name.try_into() {
                params.subject_alt_names.push(rcgen::SanType::DnsName(san));
            }
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before =
            now - time::Duration::seconds(crate::renewal::CLOCK_SKEW.as_secs() as i64);
        params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// Sign a peer's CSR, replacing whatever subject it asked for with `subject`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        subject: &CertSubject,
        validity: Duration,
    ) -> Result<SignedCert, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::BadCsr(e.to_string()))?;
        let mut params = Self::params_for(subject, validity);
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(SignedCert {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            serial: serial_hex,
        })
    }

    /// Generate a key and certificate in one step (masters started in-process).
    pub fn issue(
        &self,
        subject: &CertSubject,
        validity: Duration,
    ) -> Result<(TlsIdentity, String), TlsError> {
        let (key_pem, csr_pem) = generate_csr()?;
        let signed = self.sign_csr(&csr_pem, subject, validity)?;
        Ok((
            TlsIdentity {
                cert_pem: signed.cert_pem,
                key_pem,
                ca_pem: self.cert_pem.clone(),
            },
            signed.serial,
        ))
    }
}

/// Hex SHA-256 of the public key a CSR asks to certify, read without checking the
/// CSR's signature (signing it checks that): which key pair an enrollee holds.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, TlsError> {
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| TlsError::BadCsr(format!("not PEM: {e}")))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| TlsError::BadCsr(format!("not a certificate request: {e}")))?;
    let key = &csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data;
    Ok(hex::encode(Sha256::digest(key)))
}

/// A CSR for the key pair we already hold (`key_pem`): enrolling again with the same
/// key shows the cluster master it is the same agent.
pub fn csr_for_key(key_pem: &str) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    Ok(CertificateParams::default()
        .serialize_request(&key)?
        .pem()?)
}

/// A fresh key pair and a CSR for it: `(key_pem, csr_pem)`.
pub fn generate_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// No TLS session resumption on our links, server side (clients disable it too).
///
/// rustls' defaults send two session tickets after every handshake and keep a
/// 256-entry session cache in every client configuration. Nothing of ours would resume:
/// an agent connects once to its group master and after a failover to another one, a
/// restarted master has lost its sessions, and enrollees never come back with the
/// same identity. Yet the tickets cost each handshake two more messages, and each
/// client stored them with a copy of the server's chain: 13.5 KiB of cache per client
/// configuration and 2.3 KiB of tickets per agent, most of what the simulated fleet's
/// process held per agent besides quinn's own state (heaptrack, docs/BENCHMARKS.md).
fn without_resumption_tickets(config: &mut rustls::ServerConfig) {
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}

/// Who is on the other end of a connection, from its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub id: String,
    pub role: CertRole,
    pub group: Option<String>,
    pub serial: String,
}

/// Read identity from a DER certificate (already verified by the TLS layer).
pub fn parse_peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let id = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let role = CertRole::parse(subject.iter_organizational_unit().next()?.as_str().ok()?)?;
    let group = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string);
    let serial = hex::encode(cert.raw_serial());
    Some(PeerCert {
        id,
        role,
        group,
        serial,
    })
}

/// The verified client certificate of a connection, if the client presented one.
pub(crate) fn peer_cert(conn: &quinn::Connection) -> Option<PeerCert> {
    peer_cert_of(conn.peer_identity())
}

/// [`peer_cert`] from a TLS session's peer identity (quinn's or quinn-proto's).
pub fn peer_cert_of(identity: Option<Box<dyn std::any::Any>>) -> Option<PeerCert> {
    let chain = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    parse_peer_cert(chain.first()?.as_ref())
}

/// Whether a server asks connecting clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from the cluster CA.
    Required,
    /// Clients without certificates may connect (the cluster master, for enrollment);
    /// the application then only lets them enroll.
    Optional,
}

impl TlsIdentity {
    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        root_store(&pem_chain(&self.ca_pem)?)
    }

    /// rustls server configuration for QUIC.
    pub fn server_tls(&self, client_auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
        let slot = crate::renewal::CertSlot::new(&self.cert_pem, &self.key_pem)?;
        self.server_tls_with(client_auth, slot.resolver())
    }

    /// rustls server configuration trusting our CA for client certificates and
    /// presenting what `certs` resolves to (a renewable certificate).
    pub fn server_tls_with(
        &self,
        client_auth: ClientAuth,
        certs: Arc<dyn rustls::server::ResolvesServerCert>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let builder = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider());
        let verifier = match client_auth {
            ClientAuth::Required => builder.build(),
            ClientAuth::Optional => builder.allow_unauthenticated().build(),
        }
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs);
        config.alpn_protocols = vec![ALPN.to_vec()];
        without_resumption_tickets(&mut config);
        Ok(config)
    }

    /// rustls client configuration presenting our certificate and trusting the CA.
    pub fn client_tls(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(remembering_webpki(&self.ca_pem)?)
            .with_client_auth_cert(pem_chain(&self.cert_pem)?, pem_key(&self.key_pem)?)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// The serial of our own certificate.
    pub fn serial(&self) -> Option<String> {
        let der = pem_to_der(&self.cert_pem).ok()?;
        parse_peer_cert(der.as_ref()).map(|p| p.serial)
    }
}

/// A root store of the CA certificates `cas`.
fn root_store(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in cas {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

/// webpki's server verification against the CAs in `ca_pem`, each chain verified once
/// per process (see [`crate::verified`]).
fn remembering_webpki(ca_pem: &str) -> Result<Arc<Remembering>, TlsError> {
    let cas = pem_chain(ca_pem)?;
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(root_store(&cas)?, provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let anchors =
        anchors_id(std::iter::once(b"webpki".as_slice()).chain(cas.iter().map(|c| c.as_ref())));
    Ok(Remembering::new(webpki, anchors))
}

/// How an enrollee that has no certificate yet trusts the cluster master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaTrust {
    /// The CA certificate is known (shipped with the boot image or config).
    Pem(String),
    /// Only the CA's SHA-256 is known (`ca_cert_hash`, as kubeadm pins it).
    Sha256(String),
    /// Trust the CA the server presents on first use. Logged as a warning by callers.
    FirstUse,
}

/// rustls client configuration for enrollment: no client certificate.
pub fn enroll_client_tls(trust: &CaTrust) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let verifier = match trust {
        CaTrust::Pem(pem) => remembering_webpki(pem)?,
        CaTrust::Sha256(hash) => {
            let hash = hash.to_ascii_lowercase();
            let anchors = anchors_id([b"pinned".as_slice(), hash.as_bytes()]);
            let pinned = Arc::new(PinnedCaVerifier {
                ca_sha256: Some(hash),
                provider: provider(),
            });
            Remembering::new(pinned, anchors)
        }
        CaTrust::FirstUse => {
            let pinned = Arc::new(PinnedCaVerifier {
                ca_sha256: None,
                provider: provider(),
            });
            Remembering::new(pinned, anchors_id([b"first use".as_slice()]))
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Verifies a server chain `[leaf, ca]` against the CA it carries, after checking that
/// CA's hash (or accepting any CA on first use).
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_sha256: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = match &self.ca_sha256 {
            Some(hash) => intermediates
                .iter()
                .find(|c| &cert_sha256_hex(c.as_ref()) == hash),
            None => intermediates.last(),
        }
        .ok_or_else(|| {
            rustls::Error::General("server did not present the pinned cluster CA".into())
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_key_hash_tells_key_pairs_apart() {
        let (_, csr_a) = generate_csr().unwrap();
        let (_, csr_b) = generate_csr().unwrap();
        let a = csr_key_sha256(&csr_a).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, csr_key_sha256(&csr_a).unwrap());
        assert_ne!(a, csr_key_sha256(&csr_b).unwrap());
        assert!(csr_key_sha256("garbage").is_err());
        // A CSR for a key we hold names that key again.
        let (key, csr) = generate_csr().unwrap();
        let again = csr_for_key(&key).unwrap();
        assert_eq!(
            csr_key_sha256(&again).unwrap(),
            csr_key_sha256(&csr).unwrap()
        );
    }

    #[test]
    fn csr_signing_sets_our_subject_not_the_requested_one() {
        let ca = ClusterCa::generate("test").unwrap();
        let (_key, csr) = generate_csr().unwrap();
        let subject = CertSubject {
            id: "n-0123".into(),
            role: CertRole::Node,
            group: Some("g02".into()),
        };
        let signed = ca
            .sign_csr(&csr, &subject, Duration::from_secs(3600))
            .unwrap();
        let der = pem_to_der(&signed.cert_pem).unwrap();
        let peer = parse_peer_cert(der.as_ref()).unwrap();
        assert_eq!(peer.id, "n-0123");
        assert_eq!(peer.role, CertRole::Node);
        assert_eq!(peer.group.as_deref(), Some("g02"));
        assert_eq!(peer.serial, signed.serial);
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = ClusterCa::generate("test").unwrap();
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_hash().unwrap(), ca.cert_hash().unwrap());
        let subject = CertSubject {
            id: "g00".into(),
            role: CertRole::GroupMaster,
            group: None,
        };
        let (identity, serial) = again.issue(&subject, Duration::from_secs(60)).unwrap();
        assert_eq!(identity.serial().unwrap(), serial);
        identity.server_tls(ClientAuth::Required).unwrap();
        identity.client_tls().unwrap();
    }

    #[test]
    fn servers_send_no_session_tickets() {
        let ca = ClusterCa::generate("tickets").unwrap();
        let subject = CertSubject {
            id: "g1".into(),
            role: CertRole::GroupMaster,
            group: None,
        };
        let (identity, _) = ca.issue(&subject, Duration::from_secs(60)).unwrap();
        for auth in [ClientAuth::Required, ClientAuth::Optional] {
            let config = identity.server_tls(auth).unwrap();
            assert_eq!(config.send_tls13_tickets, 0);
            assert!(!config.session_storage.can_cache());
        }
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = ClusterCa::generate("test").unwrap();
        let subject = CertSubject {
            id: "n".into(),
            role: CertRole::Node,
            group: None,
        };
        assert!(matches!(
            ca.sign_csr("not a csr", &subject, Duration::from_secs(1)),
            Err(TlsError::BadCsr(_))
        ));
    }
}

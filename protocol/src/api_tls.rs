//! TLS of the cluster master's REST API (HTTPS): a server certificate from the cluster
//! CA for the names and addresses clients reach the API by, or one the operator
//! supplies; clients (the CLI, group masters and provisioners fetching content, agents'
//! peers) verify it against the cluster CA (`<data-dir>/ca.pem`).
//!
//! Unlike the QUIC links, the API speaks HTTP/1.1 over TLS 1.2 or 1.3 without client
//! certificates: callers authenticate with bearer tokens, which TLS now keeps secret.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};

pub use crate::renewal::CertSlot;
use crate::tls::{provider, random_serial, ClusterCa, TlsError};

/// Common name of API certificates the cluster CA issues.
pub const API_CERT_NAME: &str = "glory-cluster-master-api";

/// A certificate for the API, valid for `names` (IP addresses and DNS names), signed
/// by `ca`: the certificate followed by the CA's, and the key, in PEM.
pub fn issue_api_cert(
    ca: &ClusterCa,
    names: &[String],
    validity: Duration,
) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, API_CERT_NAME);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if !dns_name(name) => {
                return Err(TlsError::Pem(format!(
                    "API name {name:?} is neither an IP address nor a DNS name"
                )))
            }
            Err(_) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e| TlsError::Pem(format!("API name {name:?}: {e}")))?,
            ),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(10);
    params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
    params.serial_number = Some(random_serial().0);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca.issuer())?;
    Ok((
        format!("{}{}", cert.pem(), ca.cert_pem()),
        key.serialize_pem(),
    ))
}

/// Whether `name` is a DNS name (labels of letters, digits and '-', a leading `*.`
/// allowed).
fn dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The rustls server configuration of the API: the certificate in `slot` (a chain,
/// leaf first, and its key; replaced when renewed), HTTP/1.1, no client certificates.
pub fn api_server_tls(slot: &CertSlot) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(slot.resolver());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_certificates_name_every_address_and_serve() {
        let ca = ClusterCa::generate("t").unwrap();
        let names = ["127.0.0.1", "::1", "localhost", "api.example", "127.0.0.1"].map(String::from);
        let (cert, key) = issue_api_cert(&ca, &names, Duration::from_secs(3600)).unwrap();
        let chain = crate::tls::pem_chain(&cert).unwrap();
        assert_eq!(chain.len(), 2, "leaf and CA");
        let (_, parsed) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        for want in ["IPAddress([127, 0, 0, 1])", "localhost", "api.example"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert_eq!(san.general_names.len(), 4, "duplicates dropped: {text}");
        api_server_tls(&CertSlot::new(&cert, &key).unwrap()).unwrap();
        assert!(CertSlot::new("", &key).is_err());
        assert!(issue_api_cert(&ca, &["bad name!".into()], Duration::from_secs(60)).is_err());
    }
}

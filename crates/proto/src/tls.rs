//! TLS for Runnel's gRPC, and the node identity it carries.
//!
//! A node started with a certificate, its key and the cluster's CA (`--tls-cert`,
//! `--tls-key`, `--tls-ca`) serves every gRPC listener over TLS and calls the other nodes with
//! its certificate as the client certificate. A node's certificate names it: its subject
//! common name is `runnel-node-<id>` ([`node_common_name`]). An inter-node call
//! (Raft, replication, broker registration and sessions, ISR changes) claims to come from a
//! node id; [`PeerCheck`] refuses it unless the caller's verified certificate names that node,
//! so a client that reaches the internal port cannot forge a vote, a replica fetch or an ISR
//! change, and one node cannot speak for another.
//!
//! [`generate`] writes a throwaway CA and node certificates (`runnel tls generate`, the
//! testkit's TLS clusters).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The subject common name prefix of a node certificate.
pub const NODE_CN_PREFIX: &str = "runnel-node-";

/// The subject common name that makes a certificate node `id`'s.
pub fn node_common_name(id: u32) -> String {
    format!("{NODE_CN_PREFIX}{id}")
}

/// Why TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind needed.
    #[error("{path} holds no PEM {kind}")]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        kind: &'static str,
    },
    /// The node certificate does not name a node.
    #[error("{path}: {why}")]
    NotANodeCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Certificate generation, or building a TLS configuration, failed.
    #[error("TLS: {0}")]
    Generate(String),
}

/// A node's TLS material: its certificate chain and key, and the cluster CA that every peer's
/// certificate must chain to. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    node_id: u32,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// The contents of the first PEM block whose label ends with `kind` (`CERTIFICATE`, or
/// `PRIVATE KEY` for any key format), or `None`.
fn first_pem(pem: &[u8], kind: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map_while(Result::ok)
        .find(|block| block.label.ends_with(kind))
        .map(|block| block.contents)
}

/// The node id a DER certificate's subject common name gives, if it is a node certificate.
pub fn node_id_of(der: &[u8]) -> Result<u32, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate's subject has no common name")?;
    cn.strip_prefix(NODE_CN_PREFIX)
        .and_then(|id| id.parse::<u32>().ok())
        .ok_or_else(|| format!("its subject common name {cn:?} is not {NODE_CN_PREFIX}<node id>"))
}

impl NodeTls {
    /// Reads and checks the node's certificate, key and CA files (PEM). The certificate must
    /// name a node (`runnel-node-<id>`).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, TlsError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let ca_pem = read(ca)?;
        let der = first_pem(&cert_pem, "CERTIFICATE")
            .ok_or_else(|| TlsError::NotPem { path: cert.to_owned(), kind: "CERTIFICATE" })?;
        first_pem(&key_pem, "PRIVATE KEY")
            .ok_or_else(|| TlsError::NotPem { path: key.to_owned(), kind: "PRIVATE KEY" })?;
        first_pem(&ca_pem, "CERTIFICATE")
            .ok_or_else(|| TlsError::NotPem { path: ca.to_owned(), kind: "CERTIFICATE" })?;
        let node_id =
            node_id_of(&der).map_err(|why| TlsError::NotANodeCertificate { path: cert.to_owned(), why })?;
        Ok(NodeTls { cert_pem, key_pem, ca_pem, node_id })
    }

    /// The node id its certificate names.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// For a server: this node's identity; client certificates chained to the CA are asked
    /// for, and required when `require_client_cert` (the internal listener). Without one a
    /// caller can still reach client calls; [`PeerCheck`] refuses it every inter-node call.
    pub fn server(&self, require_client_cert: bool) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(!require_client_cert)
    }

    /// A rustls server configuration with this node's certificate and key, asking no client
    /// certificate: for listeners tonic does not serve (Kafka's SSL listener).
    pub fn rustls_server(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |why: String| TlsError::Generate(why);
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("the node certificate: {e}")))?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad(format!("the node key: {e}")))?;
        // The process's provider: ring, the one crypto backend built in (as for tonic).
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad(format!("the node certificate and key: {e}")))?;
        Ok(std::sync::Arc::new(config))
    }

    /// For a channel to another node: the CA to verify it by, and this node's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// An endpoint for `addr` (`host:port`): `https` with `tls` when set, else `http`.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone()),
        None => Endpoint::from_shared(format!("http://{addr}")),
    }
}

/// How a node checks who makes an inter-node call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerCheck {
    /// No TLS: every caller is taken at its word (the planes' separation is the only guard).
    #[default]
    Off,
    /// TLS: the caller's verified certificate must name the node the call claims to be from.
    NodeCertificate,
}

impl PeerCheck {
    /// `NodeCertificate` when the node runs TLS.
    pub fn for_tls(tls: bool) -> PeerCheck {
        if tls { PeerCheck::NodeCertificate } else { PeerCheck::Off }
    }

    /// The node id the caller's certificate names; `Ok(None)` with the check off.
    pub fn caller<T>(self, request: &Request<T>) -> Result<Option<u32>, Status> {
        if self == PeerCheck::Off {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("an inter-node call needs a node certificate (TLS client authentication)")
        })?;
        let der = certs.first().ok_or_else(|| Status::unauthenticated("the caller sent no certificate"))?;
        node_id_of(der)
            .map(Some)
            .map_err(|why| Status::permission_denied(format!("not a node certificate: {why}")))
    }

    /// Refuses the call unless the caller's certificate names node `claimed` (with the check
    /// on); `what` names the call in the error.
    pub fn check<T>(self, request: &Request<T>, claimed: u64, what: &str) -> Result<(), Status> {
        match self.caller(request)? {
            Some(id) if u64::from(id) != claimed => Err(Status::permission_denied(format!(
                "{what} claims to come from node {claimed}, but the caller's certificate is node {id}'s"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses the call unless the caller has a node certificate (with the check on): for
    /// calls any node may make on another's behalf, such as forwarded ones.
    pub fn any_node<T>(self, request: &Request<T>) -> Result<(), Status> {
        self.caller(request).map(|_| ())
    }
}

/// Writes a throwaway CA (`ca.pem`, `ca.key`) and, for each id in `nodes`, `node-<id>.pem`
/// and `node-<id>.key` into `dir`, each node certificate valid for `hosts` (names or IP
/// addresses it is reached by) and naming its node. For tests and local clusters: the CA key
/// is left beside the certificates.
pub fn generate(dir: &Path, nodes: &[u32], hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let write = |name: String, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| TlsError::Read { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { path: dir.to_owned(), source })?;
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.distinguished_name.push(DnType::CommonName, "runnel throwaway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
    write("ca.pem".into(), ca_cert.pem())?;
    write("ca.key".into(), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    for &id in nodes {
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, node_common_name(id));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        write(format!("node-{id}.pem"), cert.pem())?;
        write(format!("node-{id}.key"), key.serialize_pem())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_and_name_their_node() {
        let dir = std::env::temp_dir().join(format!("runnel-tls-test-{}", std::process::id()));
        generate(&dir, &[1, 7], &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let tls =
            NodeTls::load(&dir.join("node-7.pem"), &dir.join("node-7.key"), &dir.join("ca.pem")).unwrap();
        assert_eq!(tls.node_id(), 7);
        tls.rustls_server().expect("a rustls server configuration from the generated files");
        // The CA is no node: loading it as a node certificate says why.
        let err = NodeTls::load(&dir.join("ca.pem"), &dir.join("ca.key"), &dir.join("ca.pem")).unwrap_err();
        assert!(err.to_string().contains("is not runnel-node-<node id>"), "{err}");
        let err =
            NodeTls::load(&dir.join("node-1.key"), &dir.join("node-1.key"), &dir.join("ca.pem")).unwrap_err();
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

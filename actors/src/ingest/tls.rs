//! TLS for `mqtts://` brokers: trust from `mqtt.ca_cert` (or the system's
//! roots when empty), optional client certificate + key for mutual TLS (AWS
//! IoT Core requires it). Files are read once, at start, so a bad path stops
//! the process with the key named instead of failing on every reconnect.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{key}`: cannot read {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("`{key}`: {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: String },
    #[error("`mqtt.ca_cert` is empty and no system root certificate could be loaded")]
    NoRoots,
    #[error("`mqtt.client_cert` and `mqtt.client_key` must be set together")]
    HalfClientAuth,
    #[error("client certificate and key do not form a valid identity: {0}")]
    Identity(String),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// Where the TLS material lives (empty = not set).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
}

fn certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if files.ca_cert.is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            // A malformed system certificate is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
    } else {
        for cert in certs("mqtt.ca_cert", &files.ca_cert)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (files.client_cert.is_empty(), files.client_key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain = certs("mqtt.client_cert", &files.client_cert)?;
            let key = PrivateKeyDer::from_pem_file(Path::new(&files.client_key)).map_err(|e| {
                TlsError::File {
                    key: "mqtt.client_key",
                    path: files.client_key.clone(),
                    reason: e.to_string(),
                }
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Identity(e.to_string()))?
        }
        _ => return Err(TlsError::HalfClientAuth),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_names_the_key() {
        let err = client_config(&TlsFiles {
            ca_cert: "/nonexistent/ca.pem".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("mqtt.ca_cert"), "{err}");
    }

    #[test]
    fn a_client_cert_without_its_key_is_refused() {
        let err = client_config(&TlsFiles {
            ca_cert: String::new(),
            client_cert: "/x/cert.pem".into(),
            client_key: String::new(),
        });
        assert!(matches!(
            err,
            Err(TlsError::HalfClientAuth | TlsError::NoRoots)
        ));
    }
}

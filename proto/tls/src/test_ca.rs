//! A certificate authority made on the spot, and certificates it signs, written as PEM
//! files into a directory: what a test needs to run Engram over TLS without a PKI.
//! Failures panic, naming what failed, as befits test set-up.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA whose certificate is in `<dir>/<name>-ca.pem`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    key: KeyPair,
    certificate: rcgen::Certificate,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Makes a CA called `name` and writes its certificate into `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let certificate = params.self_signed(&key).expect("self-sign the CA");
        let ca = TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            key,
            certificate,
        };
        write(&ca.ca_path(), &ca.certificate.pem());
        ca
    }

    /// The file holding the CA's certificate: what clients trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Signs a certificate for `names` (host names or IP addresses), usable by servers
    /// and clients alike, and writes it and its key as `<dir>/<name>-<stem>.pem` and
    /// `<dir>/<name>-<stem>-key.pem`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> IssuedFiles {
        let key = KeyPair::generate().expect("generate a key");
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, stem);
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .expect("sign a certificate");
        let files = IssuedFiles {
            cert: self.dir.join(format!("{}-{stem}.pem", self.name)),
            key: self.dir.join(format!("{}-{stem}-key.pem", self.name)),
        };
        write(&files.cert, &certificate.pem());
        write(&files.key, &key.serialize_pem());
        files
    }
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

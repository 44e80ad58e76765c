use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use crate::test_ca::TestCa;
use crate::{server_name, ClientTls, Endpoint, ServerTls, ServerTlsFiles, TlsError};

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "engram-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a handshake between the two configurations in memory; the error is whichever
/// side refused first.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut client = ClientConnection::new(client, name)?;
    let mut server = ServerConnection::new(server)?;
    for _ in 0..8 {
        let mut flight = Vec::new();
        client.write_tls(&mut flight).unwrap();
        server.read_tls(&mut flight.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut flight = Vec::new();
        server.write_tls(&mut flight).unwrap();
        client.read_tls(&mut flight.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // Under TLS 1.3 a client ends its handshake before the server checked its
            // certificate: one more flight lets the server have its say.
            let mut flight = Vec::new();
            client.write_tls(&mut flight).unwrap();
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets()?;
            return Ok(());
        }
    }
    panic!("the handshake did not end");
}

fn node_files(ca: &TestCa, client_ca: Option<&Path>) -> ServerTlsFiles {
    let issued = ca.issue("node", &["localhost", "127.0.0.1"]);
    ServerTlsFiles {
        cert: issued.cert,
        key: issued.key,
        client_ca: client_ca.map(Path::to_path_buf),
    }
}

#[test]
fn a_client_trusting_the_ca_is_served_under_the_certificate_s_names() {
    let dir = scratch_dir();
    let ca = TestCa::new(&dir, "engram");
    let server = ServerTls::load(node_files(&ca, None)).unwrap();
    let client = ClientTls::trusting(&ca.ca_path()).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        handshake(client.config(), server.config(), name).unwrap();
    }
    let error = handshake(client.config(), server.config(), "elsewhere.example").unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[test]
fn a_client_trusting_another_ca_is_refused() {
    let dir = scratch_dir();
    let server = ServerTls::load(node_files(&TestCa::new(&dir, "engram"), None)).unwrap();
    let stranger = ClientTls::trusting(&TestCa::new(&dir, "other").ca_path()).unwrap();
    let error = handshake(stranger.config(), server.config(), "localhost").unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[test]
fn with_a_client_ca_only_clients_showing_its_certificates_are_served() {
    let dir = scratch_dir();
    let ca = TestCa::new(&dir, "engram");
    let server = ServerTls::load(node_files(&ca, Some(&ca.ca_path()))).unwrap();
    assert!(server.verifies_clients());
    let anonymous = ClientTls::trusting(&ca.ca_path()).unwrap();
    let refused = handshake(anonymous.config(), server.config(), "localhost").unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    let peer = ca.issue("peer", &["peer.local"]);
    let known = ClientTls::with_identity(&ca.ca_path(), &peer.cert, &peer.key).unwrap();
    handshake(known.config(), server.config(), "localhost").unwrap();
    let outsider_ca = TestCa::new(&dir, "outsider");
    let outsider = outsider_ca.issue("peer", &["peer.local"]);
    let unknown = ClientTls::with_identity(&ca.ca_path(), &outsider.cert, &outsider.key).unwrap();
    assert!(handshake(unknown.config(), server.config(), "localhost").is_err());
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_failed_one_keeps_the_old() {
    let dir = scratch_dir();
    let first_ca = TestCa::new(&dir, "first");
    let files = node_files(&first_ca, None);
    let server = ServerTls::load(files.clone()).unwrap();
    let trusts_first = ClientTls::trusting(&first_ca.ca_path()).unwrap();
    handshake(trusts_first.config(), server.config(), "localhost").unwrap();

    // A certificate half written, as a copy in progress leaves it.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
    assert!(server.reload().is_err());
    handshake(trusts_first.config(), server.config(), "localhost").unwrap();

    let second_ca = TestCa::new(&dir, "second");
    let renewed = second_ca.issue("node", &["localhost"]);
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    let before = server.config();
    server.reload().unwrap();
    let trusts_second = ClientTls::trusting(&second_ca.ca_path()).unwrap();
    handshake(trusts_second.config(), server.config(), "localhost").unwrap();
    assert!(handshake(trusts_first.config(), server.config(), "localhost").is_err());
    // A connection that took its configuration before the reload keeps it.
    handshake(trusts_first.config(), before, "localhost").unwrap();
}

#[test]
fn errors_name_the_file_at_fault() {
    let dir = scratch_dir();
    let ca = TestCa::new(&dir, "engram");
    let mut files = node_files(&ca, None);
    files.cert = dir.join("missing.pem");
    let missing = ServerTls::load(files.clone()).unwrap_err().to_string();
    assert!(
        missing.contains("missing.pem") && missing.contains("certificates"),
        "{missing}"
    );

    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    files.cert = empty;
    assert!(matches!(ServerTls::load(files.clone()), Err(TlsError::Empty { .. })));

    // A certificate with another certificate's key.
    let other = ca.issue("other", &["localhost"]);
    files.cert = other.cert;
    let mismatched = ServerTls::load(files).unwrap_err();
    assert!(matches!(mismatched, TlsError::Identity { .. }), "{mismatched}");
}

#[test]
fn server_names_come_from_the_address_host() {
    assert_eq!(
        server_name("localhost:7400").unwrap(),
        ServerName::try_from("localhost").unwrap()
    );
    assert_eq!(
        server_name("127.0.0.1:7400").unwrap(),
        ServerName::try_from("127.0.0.1").unwrap()
    );
    assert_eq!(server_name("[::1]:7400").unwrap(), ServerName::try_from("::1").unwrap());
    assert!(matches!(server_name("no-port"), Err(TlsError::ServerName { .. })));
    assert!(matches!(server_name(":7400"), Err(TlsError::ServerName { .. })));
}

#[test]
fn tls_addresses_are_marked_by_their_scheme() {
    assert_eq!(
        Endpoint::parse("tls://db.local:7400"),
        Endpoint {
            address: "db.local:7400",
            tls: true
        }
    );
    assert_eq!(
        Endpoint::parse("db.local:7400"),
        Endpoint {
            address: "db.local:7400",
            tls: false
        }
    );
}

#[test]
fn only_a_handshake_record_reads_as_tls() {
    assert!(crate::opens_tls_handshake(22));
    // Engram's frame magic and RESP's first bytes.
    for first in [b'*', b'P', b'A', b'E', 0] {
        assert!(!crate::opens_tls_handshake(first));
    }
}

use super::*;
use proptest::prelude::*;

const ALICE_TOKEN: &[u8] = b"alice-token-0123456789";
const OPS_TOKEN: &[u8] = b"ops-token-0123456789";
const NODE_TOKEN: &[u8] = b"node-token-0123456789";

fn file_text() -> String {
    format!(
        "# tenants\n{}\n\n{}   # operators\n{}\n",
        credential_line("alice", ALICE_TOKEN, Rights::DATA, "app-a,default"),
        credential_line("ops", OPS_TOKEN, Rights::NONE.with(Right::Admin), "*"),
        credential_line("nodes", NODE_TOKEN, Rights::NONE.with(Right::Node), "*"),
    )
}

fn gate() -> Gate {
    Gate::Credentials(Credentials::parse(&file_text(), "credentials").unwrap())
}

fn line_error(text: &str) -> String {
    match Credentials::parse(text, "creds") {
        Err(error) => error.to_string(),
        Ok(_) => panic!("{text:?} parsed"),
    }
}

#[test]
fn a_file_is_matched_by_token_and_keeps_names_rights_and_namespaces() {
    let credentials = Credentials::parse(&file_text(), "credentials").unwrap();
    assert_eq!(credentials.len(), 3);
    let alice = credentials.find(ALICE_TOKEN).unwrap();
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.rights, Rights::DATA);
    assert_eq!(
        alice.namespaces,
        Namespaces::Only(vec![b"app-a".to_vec(), b"default".to_vec()])
    );
    assert_eq!(credentials.find(OPS_TOKEN).unwrap().namespaces, Namespaces::Any);
    assert!(credentials.find(b"alice-token-012345678").is_none());
    assert!(credentials.find(b"").is_none());
}

#[test]
fn the_file_holds_digests_not_tokens() {
    let text = file_text();
    assert!(!text.contains(std::str::from_utf8(ALICE_TOKEN).unwrap()));
    // The digest of "abc", from FIPS 180-2's examples.
    let line = credential_line("x", b"abc", Rights::ALL, "*");
    assert_eq!(
        line,
        "x sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad read,write,coordinate,admin,node *"
    );
}

#[test]
fn a_tenant_is_admitted_to_its_namespaces_only() {
    let gate = gate();
    let grant = gate.admit(ALICE_TOKEN, Family::Client, b"app-a", false).unwrap();
    assert_eq!(grant.name(), "alice");
    assert!(gate.admit(ALICE_TOKEN, Family::Client, b"default", false).is_ok());
    assert!(
        gate.admit(ALICE_TOKEN, Family::Client, b"", false).is_err(),
        "the empty namespace is not `default`"
    );
    let denied = gate.admit(ALICE_TOKEN, Family::Client, b"app-b", false).unwrap_err();
    assert_eq!(denied.code(), ErrorCode::Forbidden);
    assert_eq!(denied.to_string(), "credential `alice` may not use namespace `app-b`");
}

#[test]
fn an_unknown_token_is_unauthorized_and_a_known_one_beyond_its_rights_forbidden() {
    let gate = gate();
    let unknown = gate.admit(b"guess", Family::Client, b"app-a", false).unwrap_err();
    assert_eq!(
        (unknown.code(), unknown),
        (ErrorCode::Unauthorized, Denial::UnknownToken)
    );
    let grant = gate.admit(ALICE_TOKEN, Family::Client, b"app-a", false).unwrap();
    assert!(grant.require(Right::Coordinate, "lock.acquire").is_ok());
    let denied = grant.require(Right::Admin, "info").unwrap_err();
    assert_eq!(denied.code(), ErrorCode::Forbidden);
    assert_eq!(
        denied.to_string(),
        "credential `alice` lacks the admin right, which info needs"
    );
}

#[test]
fn peers_need_the_node_right_and_the_control_plane_node_or_admin() {
    let gate = gate();
    assert!(gate.admit(NODE_TOKEN, Family::Peer, b"", false).is_ok());
    for token in [ALICE_TOKEN, OPS_TOKEN] {
        let denied = gate.admit(token, Family::Peer, b"", false).unwrap_err();
        assert_eq!(denied.code(), ErrorCode::Forbidden, "{denied}");
    }
    assert!(gate.admit(NODE_TOKEN, Family::Control, b"", false).is_ok());
    assert!(gate.admit(OPS_TOKEN, Family::Control, b"", false).is_ok());
    let denied = gate.admit(ALICE_TOKEN, Family::Control, b"", false).unwrap_err();
    assert!(denied.to_string().contains("lacks the node right"), "{denied}");
}

#[test]
fn a_node_forwarding_for_clients_has_every_data_right_in_every_namespace_of_a_shard_port_only() {
    let grant = gate().admit(NODE_TOKEN, Family::Client, b"app-b", true).unwrap();
    for right in [Right::Read, Right::Write, Right::Coordinate, Right::Node] {
        assert!(grant.rights().contains(right), "{right}");
    }
    assert!(!grant.rights().contains(Right::Admin));
    // At a port no node forwards to (the front port, the Redis door) it has its own rights.
    let elsewhere = gate().admit(NODE_TOKEN, Family::Client, b"app-b", false).unwrap();
    assert_eq!(elsewhere.rights(), Rights::NONE.with(Right::Node));
    assert!(elsewhere.require(Right::Read, "get").is_err());
}

#[test]
fn a_node_credential_lists_every_namespace() {
    let line = credential_line("nodes", b"t", Rights::NONE.with(Right::Node), "app-a");
    assert!(
        line_error(&line).contains("its namespaces must be `*`"),
        "{}",
        line_error(&line)
    );
}

#[test]
fn an_open_gate_and_a_shared_token_grant_everything() {
    assert_eq!(
        Gate::Open.admit(b"", Family::Peer, b"x", false).unwrap(),
        Grant::everything()
    );
    assert!(!Gate::Open.requires_credentials());
    let shared = Gate::Token(b"secret".to_vec());
    assert!(shared.requires_credentials());
    assert_eq!(
        shared.admit(b"secret", Family::Control, b"", false).unwrap().rights(),
        Rights::ALL
    );
    assert_eq!(
        shared.admit(b"secreT", Family::Client, b"", false).unwrap_err(),
        Denial::UnknownToken
    );
}

#[test]
fn each_fault_of_a_file_names_its_line() {
    let good = credential_line("a", b"t", Rights::ALL, "*");
    let cases = [
        (
            "a sha256:00 read *",
            "creds:1: `sha256:00` is not sha256: and 64 hex digits",
        ),
        ("\n a read *", "creds:2: 3 fields where a credential has 4"),
        (&good.replace(" *", " ns,*"), "creds:1: `*` stands alone"),
        (&good.replace(" *", " a,,b"), "creds:1: an empty namespace name"),
        (&good.replace("read,", "rread,"), "creds:1: unknown right `rread`"),
        (&good.replace("sha256:", "md5:"), "is not sha256:"),
        (
            &format!("{good}\n{}", credential_line("a", b"u", Rights::ALL, "*")),
            "creds:2: credential `a` is listed twice",
        ),
        (
            &format!("{good}\n{}", credential_line("b", b"t", Rights::ALL, "*")),
            "creds:2: credential `b` has the token of `a`",
        ),
        ("# nothing\n\n", "lists no credential"),
    ];
    for (text, expected) in cases {
        let error = line_error(text);
        assert!(error.contains(expected), "{text:?}: {error}");
    }
    let long_name = credential_line(&"n".repeat(CREDENTIAL_NAME_BYTES_MAX + 1), b"t", Rights::ALL, "*");
    assert!(line_error(&long_name).contains("credential_name_bytes_max"));
    let long_namespace = credential_line("a", b"t", Rights::ALL, &"n".repeat(NAMESPACE_BYTES_MAX + 1));
    assert!(line_error(&long_namespace).contains("namespace_bytes_max"));
}

#[test]
fn rights_read_as_they_are_written() {
    assert_eq!(Rights::parse("all").unwrap(), Rights::ALL);
    assert_eq!(Rights::parse("read,coordinate").unwrap().to_string(), "read,coordinate");
    for right in Right::ALL {
        assert_eq!(Rights::parse(right.name()).unwrap(), Rights::NONE.with(right));
    }
    assert!(Rights::parse("").is_err());
}

#[test]
fn a_reload_takes_the_new_file_and_a_broken_one_keeps_the_old_gate() {
    let dir = std::env::temp_dir().join(format!("engram-credentials-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("credentials");
    std::fs::write(&path, credential_line("old", b"old", Rights::ALL, "*")).unwrap();
    let keeper = Gatekeeper::new(Some(&path), Some(b"ignored")).unwrap();
    assert!(keeper.gate().admit(b"old", Family::Client, b"", false).is_ok());
    std::fs::write(&path, credential_line("new", b"new", Rights::ALL, "*")).unwrap();
    assert_eq!(keeper.generation(), 0);
    assert_eq!(keeper.reload().unwrap(), Some(1));
    assert_eq!(keeper.generation(), 1, "a reload that took effect moves the generation");
    assert!(keeper.gate().admit(b"new", Family::Client, b"", false).is_ok());
    assert_eq!(
        keeper.gate().admit(b"old", Family::Client, b"", false).unwrap_err(),
        Denial::UnknownToken
    );
    std::fs::write(&path, "new sha256:12 all *").unwrap();
    assert!(keeper.reload().is_err());
    assert_eq!(keeper.generation(), 1, "a failed reload changes nothing");
    assert!(
        keeper.gate().admit(b"new", Family::Client, b"", false).is_ok(),
        "the broken file changed nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(Gatekeeper::open().reload().unwrap(), None);
}

#[test]
fn a_file_too_large_is_refused_before_it_is_read_whole() {
    let dir = std::env::temp_dir().join(format!("engram-credentials-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("credentials");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(CREDENTIALS_TEXT_BYTES_MAX + 1).unwrap();
    let error = Credentials::load(&path).unwrap_err();
    assert!(error.to_string().contains("credentials_text_bytes_max"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #[test]
    fn any_text_parses_or_names_a_fault(text in "[ -~\n]{0,400}") {
        if let Err(error) = Credentials::parse(&text, "p") {
            prop_assert!(error.to_string().starts_with("p ") || error.to_string().starts_with("p:"), "{}", error);
        }
    }

    #[test]
    fn every_token_finds_its_own_credential(tokens in proptest::collection::hash_set(proptest::collection::vec(any::<u8>(), 1..40), 1..20)) {
        let text: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(index, token)| credential_line(&format!("c{index}"), token, Rights::ALL, "*"))
            .collect();
        let credentials = Credentials::parse(&text.join("\n"), "p").unwrap();
        for (index, token) in tokens.iter().enumerate() {
            prop_assert_eq!(&credentials.find(token).unwrap().name, &format!("c{index}"));
        }
    }
}

#[test]
fn a_grant_taken_again_after_a_reload_follows_the_new_file() {
    let grant = gate().admit(ALICE_TOKEN, Family::Client, b"app-a", false).unwrap();
    let reparsed = |text: String| Gate::Credentials(Credentials::parse(&text, "c").unwrap());
    let same = reparsed(file_text());
    assert_eq!(same.regrant(&grant, Family::Client, b"app-a", false).unwrap(), grant);
    let moved = reparsed(credential_line("alice", ALICE_TOKEN, Rights::DATA, "app-b"));
    let denied = moved.regrant(&grant, Family::Client, b"app-a", false).unwrap_err();
    assert_eq!(denied.code(), ErrorCode::Forbidden, "{denied}");
    let narrowed = reparsed(credential_line(
        "alice",
        ALICE_TOKEN,
        Rights::NONE.with(Right::Read),
        "app-a",
    ));
    let renewed = narrowed.regrant(&grant, Family::Client, b"app-a", false).unwrap();
    assert_eq!(renewed.rights(), Rights::NONE.with(Right::Read));
    let revoked = reparsed(credential_line("ops", OPS_TOKEN, Rights::ALL, "*"));
    assert_eq!(
        revoked.regrant(&grant, Family::Client, b"app-a", false).unwrap_err(),
        Denial::UnknownToken
    );
    let shared = Gate::Token(b"secret".to_vec());
    let admitted = shared.admit(b"secret", Family::Client, b"", false).unwrap();
    assert!(shared.regrant(&admitted, Family::Client, b"", false).is_ok());
    let other = Gate::Token(b"other".to_vec());
    assert!(other.regrant(&admitted, Family::Client, b"", false).is_err());
}

#[test]
fn given_credentials_are_shared_with_a_digest_that_follows_their_text() {
    let keeper = Gatekeeper::given(Credentials::parse(&file_text(), "etcd").unwrap());
    let shared = keeper.shared().unwrap();
    assert_eq!(shared.text, file_text());
    assert_eq!(keeper.shared_digest(), shared_digest(&file_text()));
    assert_ne!(keeper.shared_digest(), 0);
    assert_eq!(keeper.file(), None);
    // A given gate has no file to read again: a SIGHUP changes nothing.
    assert_eq!(keeper.reload().unwrap(), None);
    assert_eq!(Gatekeeper::open().shared(), None);
    assert_eq!(Gatekeeper::open().shared_digest(), 0);
    assert_eq!(Gatekeeper::new(None, Some(b"t")).unwrap().shared_digest(), 0);
}

#[test]
fn an_install_replaces_the_gate_and_moves_the_generation() {
    let keeper = Gatekeeper::given(Credentials::parse(&file_text(), "etcd").unwrap());
    let before = keeper.shared_digest();
    let bob = credential_line("bob", b"bob-token-0123456789", Rights::DATA, "*");
    let nodes = credential_line("nodes", NODE_TOKEN, Rights::NONE.with(Right::Node), "*");
    let text = format!("{bob}\n{nodes}\n");
    assert_eq!(
        keeper.install_admitting(Credentials::parse(&text, "etcd").unwrap(), NODE_TOKEN),
        Ok(2)
    );
    assert_eq!(keeper.generation(), 1);
    assert_ne!(keeper.shared_digest(), before);
    assert_eq!(keeper.shared().unwrap().text, text);
    let gate = keeper.gate();
    assert!(gate.admit(b"bob-token-0123456789", Family::Client, b"x", false).is_ok());
    assert_eq!(
        gate.admit(ALICE_TOKEN, Family::Client, b"app-a", false).unwrap_err(),
        Denial::UnknownToken
    );
}

#[test]
fn credentials_that_refuse_the_process_own_node_token_are_not_installed() {
    let keeper = Gatekeeper::given(Credentials::parse(&file_text(), "etcd").unwrap());
    let before = keeper.shared_digest();
    let without_nodes = credential_line("alice", ALICE_TOKEN, Rights::DATA, "*");
    let refused = keeper.install_admitting(Credentials::parse(&without_nodes, "etcd").unwrap(), NODE_TOKEN);
    assert_eq!(refused, Err(Denial::UnknownToken));
    let data_only = credential_line("nodes", NODE_TOKEN, Rights::DATA, "*");
    let refused = keeper.install_admitting(Credentials::parse(&data_only, "etcd").unwrap(), NODE_TOKEN);
    assert!(
        matches!(refused, Err(Denial::Right { right: Right::Node, .. })),
        "{refused:?}"
    );
    assert_eq!(keeper.generation(), 0);
    assert_eq!(keeper.shared_digest(), before);
}

#[test]
fn errors_name_where_the_text_came_from() {
    let error = Credentials::parse("", "etcd key /engram/default/credentials").unwrap_err();
    assert_eq!(
        error.to_string(),
        "etcd key /engram/default/credentials lists no credential, so nobody could connect"
    );
    let error = Credentials::parse("bad", "etcd key /k").unwrap_err();
    assert!(error.to_string().starts_with("etcd key /k:1: "), "{error}");
    let large = "#".repeat(CREDENTIALS_TEXT_BYTES_MAX as usize + 1);
    let error = Credentials::parse(&large, "the control plane's credentials").unwrap_err();
    assert!(error.to_string().contains("credentials_text_bytes_max"), "{error}");
}

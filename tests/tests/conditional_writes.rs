//! Conditional writes and types: if-absent, if-version, versions across delete and
//! re-create, counter compare-and-set, overflow and WrongType.

use std::time::Duration;

use engram_client::{CasOutcome, Error, ErrorCode, ServerCode, SetOutcome};
use engram_tests::{if_version, run_async, unique_key, EngramServer, ServerOptions};

fn server_code<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorCode {
    match result {
        Err(Error::Server {
            code: ServerCode::Known(code),
            ..
        }) => code,
        other => panic!("expected a server error code, got {other:?}"),
    }
}

#[test]
fn conditional_writes_and_versions() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let bytes = client.bytes(unique_key("conditional"));

        // if-absent: first wins, second conflicts and is told the current version.
        let SetOutcome::Written { version: v1 } = bytes.set_if_absent("first").await.expect("set_if_absent") else {
            panic!("set_if_absent on a new key must write")
        };
        assert_eq!(
            bytes.set_if_absent("second").await.expect("set_if_absent"),
            SetOutcome::Conflict { current_version: v1 }
        );
        let read = bytes.get().await.expect("get").expect("value");
        assert_eq!((read.value.as_slice(), read.version), (&b"first"[..], v1));

        // if-version: current version writes and bumps it; the old one then conflicts.
        let SetOutcome::Written { version: v2 } = bytes.set_with("third", if_version(v1)).await.expect("set") else {
            panic!("set at the current version must write")
        };
        assert!(v2 > v1, "version must grow: {v1} then {v2}");
        assert_eq!(
            bytes.set_with("stale", if_version(v1)).await.expect("set"),
            SetOutcome::Conflict { current_version: v2 }
        );
        let read = bytes.get().await.expect("get").expect("value");
        assert_eq!((read.value.as_slice(), read.version), (&b"third"[..], v2));

        // An unconditional set bumps the version too.
        let v3 = bytes.set("fourth").await.expect("set");
        assert!(v3 > v2);

        // Delete, then if-version on the absent key conflicts with 0; re-create gets a
        // version different from (and newer than) every earlier one.
        assert!(bytes.del().await.expect("del"));
        assert!(!bytes.del().await.expect("del"), "second delete finds nothing");
        assert_eq!(bytes.get().await.expect("get"), None);
        assert_eq!(
            bytes.set_with("ghost", if_version(v3)).await.expect("set"),
            SetOutcome::Conflict { current_version: 0 }
        );
        let SetOutcome::Written { version: v4 } = bytes.set_if_absent("reborn").await.expect("set_if_absent") else {
            panic!("set_if_absent after delete must write")
        };
        assert!(
            v4 > v3 && v4 != v1 && v4 != v2,
            "re-created key must not reuse a version: {v1} {v2} {v3} then {v4}"
        );
        // The old version does not match the re-created key.
        assert_eq!(
            bytes.set_with("stale", if_version(v3)).await.expect("set"),
            SetOutcome::Conflict { current_version: v4 }
        );

        // Append keeps the type and bumps the version.
        let (v5, length) = bytes.append("!").await.expect("append");
        assert!(v5 > v4);
        assert_eq!(length, b"reborn!".len() as u64);

        // Range writes keep the type, bump the version and pad; range reads cut.
        let (v6, length) = bytes.set_range(9, "x").await.expect("set_range").expect("written");
        assert!(v6 > v5);
        assert_eq!(length, 10);
        let whole = bytes.get_range(0, -1).await.expect("get_range").expect("present");
        assert_eq!((whole.value.as_slice(), whole.version), (&b"reborn!\0\0x"[..], v6));
        let tail = bytes.get_range(-3, 100).await.expect("get_range").expect("present");
        assert_eq!(tail.value, b"\0\0x");
        assert_eq!(bytes.len().await.expect("len"), Some(10));
        let absent = client.bytes(unique_key("absent"));
        assert_eq!(absent.get_range(0, -1).await.expect("get_range"), None);
        assert_eq!(absent.set_range(3, "").await.expect("set_range"), None);
        assert_eq!(absent.len().await.expect("len"), None);
    });
}

#[test]
fn counter_compare_and_set_overflow_and_types() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let counter = client.counter(unique_key("cas"));

        assert_eq!(counter.get().await.expect("get"), 0, "a missing counter reads as 0");
        // CAS against the implicit 0 of a missing counter.
        assert_eq!(
            counter.compare_and_set(0, 5).await.expect("cas"),
            CasOutcome {
                swapped: true,
                current: 5
            }
        );
        assert_eq!(
            counter.compare_and_set(4, 9).await.expect("cas"),
            CasOutcome {
                swapped: false,
                current: 5
            }
        );
        assert_eq!(counter.get().await.expect("get"), 5);
        assert_eq!(counter.add(-8).await.expect("add"), -3);

        // Counters never wrap.
        counter.set(i64::MAX).await.expect("set");
        assert_eq!(server_code(counter.incr().await), ErrorCode::Overflow);
        assert_eq!(
            counter.get().await.expect("get"),
            i64::MAX,
            "a refused add changes nothing"
        );
        counter.set(i64::MIN).await.expect("set");
        assert_eq!(server_code(counter.add(-1).await), ErrorCode::Overflow);

        // WrongType both ways, and the object is left alone.
        let text = client.bytes(unique_key("typed-bytes"));
        text.set("not a number").await.expect("set");
        let as_counter = client.counter(text.key().to_vec());
        assert_eq!(server_code(as_counter.incr().await), ErrorCode::WrongType);
        assert_eq!(server_code(as_counter.get().await), ErrorCode::WrongType);
        assert_eq!(
            server_code(as_counter.compare_and_set(0, 1).await),
            ErrorCode::WrongType
        );
        assert_eq!(text.get().await.expect("get").expect("value").value, b"not a number");

        let number = client.counter(unique_key("typed-counter"));
        number.set(7).await.expect("set");
        let as_bytes = client.bytes(number.key().to_vec());
        assert_eq!(server_code(as_bytes.get().await), ErrorCode::WrongType);
        assert_eq!(server_code(as_bytes.set("text").await), ErrorCode::WrongType);
        assert_eq!(server_code(as_bytes.append("x").await), ErrorCode::WrongType);
        assert_eq!(number.get().await.expect("get"), 7);

        // Deleting works whatever the type, after which the other type may take the key.
        assert!(as_bytes.del().await.expect("del"));
        as_bytes.set("now bytes").await.expect("set after delete");
        assert_eq!(as_bytes.get().await.expect("get").expect("value").value, b"now bytes");
    });
}

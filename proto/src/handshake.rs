//! The server side of the handshake: whether a connection's first frame admits it. Every
//! port that accepts connections (a node's front and shard ports, engram-control) admits
//! with [`admit`], so the checks and their refusals are the same everywhere.

use crate::credentials::{Gate, Grant};
use crate::error::ErrorCode;
use crate::frame::FrameKind;
use crate::limits::{CREDENTIALS_BYTES_MAX, NAMESPACE_BYTES_MAX, PROTOCOL_VERSION};
use crate::message::{Family, Hello};
use crate::protocol::Decode;

/// What a listening port is, for admission and for the words of a refusal. `S` is the
/// port's own type for the families it serves, so what it admits names only those and
/// its connections have no arm for a family they never speak.
#[derive(Clone, Copy, Debug)]
pub struct Port<'a, S> {
    /// How a refusal names it: "a node's front port", "engram-control".
    pub name: &'a str,
    /// The families it serves.
    pub families: &'a [S],
    /// Whether nodes forward their clients' requests to it (a shard's own port): only
    /// there does a client connection with the node right speak for other tenants.
    pub takes_forwarded: bool,
}

/// Why a Hello was refused; sent back as an error before the connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// A connection admitted: its Hello, the family it speaks from now on (as the port
/// names it), and what its credentials were granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted<S> {
    pub hello: Hello,
    pub served: S,
    pub grant: Grant,
}

/// Admits a connection whose first frame is `kind` with `payload`: a Hello of this
/// protocol version, within the namespace and credential limits, asking for a family
/// `port` serves, with credentials `gate` lets in for that family (and, for a client,
/// its namespace).
pub fn admit<S>(kind: FrameKind, payload: &[u8], port: &Port<'_, S>, gate: &Gate) -> Result<Admitted<S>, Refusal>
where
    S: Copy + Into<Family>,
{
    if kind != FrameKind::Hello {
        return Err(Refusal::new(
            ErrorCode::HandshakeRequired,
            "the first frame must be a Hello",
        ));
    }
    let hello = Hello::decode(payload).map_err(|error| Refusal::new(error.code(), error.to_string()))?;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not {PROTOCOL_VERSION}, the one this build speaks",
                hello.protocol_version
            ),
        ));
    }
    if hello.namespace.len() > NAMESPACE_BYTES_MAX {
        return Err(Refusal::new(
            ErrorCode::NamespaceTooLarge,
            format!(
                "namespace of {} bytes exceeds namespace_bytes_max ({NAMESPACE_BYTES_MAX})",
                hello.namespace.len()
            ),
        ));
    }
    if hello.credentials.len() > CREDENTIALS_BYTES_MAX {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            format!("credentials exceed credentials_bytes_max ({CREDENTIALS_BYTES_MAX})"),
        ));
    }
    let Some(&served) = port.families.iter().find(|&&served| served.into() == hello.family) else {
        return Err(Refusal::new(ErrorCode::FamilyNotServed, not_served(port, hello.family)));
    };
    let grant = gate
        .admit(&hello.credentials, hello.family, &hello.namespace, port.takes_forwarded)
        .map_err(|denial| Refusal::new(denial.code(), denial.to_string()))?;
    Ok(Admitted { hello, served, grant })
}

/// Says where the family asked for is served instead.
fn not_served<S: Copy + Into<Family>>(port: &Port<'_, S>, asked: Family) -> String {
    let names: Vec<&str> = port.families.iter().map(|&family| family.into().name()).collect();
    let served = match names.len() {
        1 => format!("the {} protocol", names[0]),
        _ => format!("the {} protocols", names.join(" and ")),
    };
    let elsewhere = match asked {
        Family::Client => "a node's ports",
        Family::Peer => "a node's shard ports",
        Family::Control => "engram-control",
    };
    format!(
        "{} serves {served}, not the {} protocol: that is served by {elsewhere}",
        port.name,
        asked.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_message;
    use crate::FRAME_HEADER_BYTES;

    const NODE_SHARD: Port<'static, Family> = Port {
        name: "a node's shard port",
        families: &[Family::Client, Family::Peer],
        takes_forwarded: true,
    };

    fn hello(family: Family, credentials: &[u8]) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: 7,
            namespace: b"tenant".to_vec(),
            credentials: credentials.to_vec(),
            family,
        }
    }

    fn gate(credentials: Option<&[u8]>) -> Gate {
        credentials.map_or(Gate::Open, |token| Gate::Token(token.to_vec()))
    }

    fn admit_hello(hello: &Hello, port: &Port<'_, Family>, credentials: Option<&[u8]>) -> Result<Hello, Refusal> {
        let mut frame = Vec::new();
        encode_message(FrameKind::Hello, 0, 0, hello, &mut frame).unwrap();
        admit(FrameKind::Hello, &frame[FRAME_HEADER_BYTES..], port, &gate(credentials)).map(|admitted| admitted.hello)
    }

    fn code<T: std::fmt::Debug>(result: Result<T, Refusal>) -> ErrorCode {
        result.expect_err("refused").code
    }

    #[test]
    fn a_hello_of_a_served_family_with_the_right_credentials_is_admitted() {
        let admitted = admit_hello(&hello(Family::Peer, b"token"), &NODE_SHARD, Some(b"token")).unwrap();
        assert_eq!(admitted, hello(Family::Peer, b"token"));
        let mut frame = Vec::new();
        encode_message(FrameKind::Hello, 0, 0, &hello(Family::Client, b""), &mut frame).unwrap();
        let admitted = admit(FrameKind::Hello, &frame[FRAME_HEADER_BYTES..], &NODE_SHARD, &Gate::Open).unwrap();
        assert_eq!(
            admitted.served,
            Family::Client,
            "the port's own name for the family asked"
        );
        // Without configured credentials, any are taken.
        assert!(admit_hello(&hello(Family::Client, b"anything"), &NODE_SHARD, None).is_ok());
    }

    #[test]
    fn each_check_refuses_with_its_own_code() {
        assert_eq!(
            code(admit(FrameKind::Request, &[], &NODE_SHARD, &Gate::Open)),
            ErrorCode::HandshakeRequired
        );
        assert_eq!(
            code(admit(FrameKind::Hello, &[0xff; 40], &NODE_SHARD, &Gate::Open)),
            ErrorCode::Malformed
        );
        let mut old = hello(Family::Client, b"");
        old.protocol_version = PROTOCOL_VERSION - 1;
        let refusal = admit_hello(&old, &NODE_SHARD, None).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::UnsupportedVersion);
        assert!(
            refusal.message.contains(&format!("is not {PROTOCOL_VERSION}")),
            "{}",
            refusal.message
        );
        let mut wide = hello(Family::Client, b"");
        wide.namespace = vec![b'n'; NAMESPACE_BYTES_MAX + 1];
        assert_eq!(
            code(admit_hello(&wide, &NODE_SHARD, None)),
            ErrorCode::NamespaceTooLarge
        );
        let long = hello(Family::Client, &[0; CREDENTIALS_BYTES_MAX + 1]);
        assert_eq!(code(admit_hello(&long, &NODE_SHARD, None)), ErrorCode::Unauthorized);
        for wrong in [&b"tokem"[..], b"toke", b"token!", b""] {
            let refusal = admit_hello(&hello(Family::Client, wrong), &NODE_SHARD, Some(b"token")).unwrap_err();
            assert_eq!(refusal, Refusal::new(ErrorCode::Unauthorized, "credentials refused"));
        }
    }

    #[test]
    fn a_family_the_port_does_not_serve_is_refused_saying_where_it_is_served() {
        let refusal = admit_hello(&hello(Family::Control, b""), &NODE_SHARD, None).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::FamilyNotServed);
        assert_eq!(
            refusal.message,
            "a node's shard port serves the client and peer protocols, not the control protocol: \
             that is served by engram-control"
        );
    }
}

//! A Redis-protocol client spoken by hand over a blocking `TcpStream`: commands out as
//! arrays of bulk strings (or raw bytes), replies in as [`Reply`] values, so the tests of
//! the Redis door see exactly what a Redis client would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for one reply before it calls the server silent.
pub const RESP_REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One Redis reply, RESP2 and RESP3 alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3's `_`.
    Nil,
    Array(Vec<Reply>),
    /// RESP3's map.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn bulk(text: &str) -> Reply {
        Reply::Bulk(text.as_bytes().to_vec())
    }

    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }
}

pub struct RespConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConnection {
    pub fn connect(address: SocketAddr) -> RespConnection {
        let stream = TcpStream::connect(address).expect("connect to the Redis door");
        stream.set_read_timeout(Some(RESP_REPLY_TIMEOUT)).unwrap();
        RespConnection {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        self.reply()
    }

    /// Sends one command without reading its reply (to pipeline).
    pub fn send(&mut self, args: &[&str]) {
        self.send_raw(&encode(args));
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the Redis door");
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> Reply {
        read_reply(&mut self.reader).expect("a reply")
    }

    /// Whether the server closed the connection (reads end of stream).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// A command as Redis clients send it: an array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let number = || rest.parse::<i64>().expect("a number in a reply header");
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Integer(number()),
        "_" => Reply::Nil,
        "$" | "=" if number() < 0 => Reply::Nil,
        "$" | "=" => {
            let mut bytes = vec![0u8; number() as usize + 2];
            reader.read_exact(&mut bytes)?;
            bytes.truncate(bytes.len() - 2);
            Reply::Bulk(bytes)
        }
        "*" | "~" | ">" if number() < 0 => Reply::Nil,
        "*" | "~" | ">" => Reply::Array((0..number()).map(|_| read_reply(reader)).collect::<Result<_, _>>()?),
        "%" => Reply::Map(
            (0..number())
                .map(|_| Ok((read_reply(reader)?, read_reply(reader)?)))
                .collect::<std::io::Result<_>>()?,
        ),
        other => panic!("unknown reply type {other:?} in {line:?}"),
    })
}

//! Replies of the Redis protocol, appended to the caller's buffer in the version the
//! connection speaks. RESP3's types go to a RESP2 client as Redis sends them (a map as a
//! flat array, a double as a bulk string, a boolean as 1 or 0), so a command writes its
//! reply once for both versions.

use std::fmt::{self, Write as _};

/// The protocol version of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RespVersion {
    /// What every connection speaks until it says `HELLO 3`.
    #[default]
    Resp2,
    Resp3,
}

/// Appends replies to a buffer.
#[derive(Debug)]
pub struct ReplyWriter<'a> {
    out: &'a mut Vec<u8>,
    version: RespVersion,
}

impl<'a> ReplyWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>, version: RespVersion) -> ReplyWriter<'a> {
        ReplyWriter { out, version }
    }

    pub fn version(&self) -> RespVersion {
        self.version
    }

    /// `+OK`.
    pub fn ok(&mut self) {
        self.out.extend_from_slice(b"+OK\r\n");
    }

    /// A simple string; a `\r` or `\n` in it becomes a space, so it cannot end the line.
    pub fn simple(&mut self, text: impl AsRef<[u8]>) {
        self.line(b'+', text.as_ref());
    }

    /// An error, `line` being all of it but the `-` (`ERR ...`, `WRONGTYPE ...`); a `\r`
    /// or `\n` in it becomes a space, so a message cannot break the framing.
    pub fn error(&mut self, line: impl AsRef<[u8]>) {
        self.line(b'-', line.as_ref());
    }

    pub fn integer(&mut self, value: i64) {
        self.out.push(b':');
        push_i64(self.out, value);
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn bulk(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.header(b'$', bytes.len());
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(b"\r\n");
    }

    /// No value: RESP2's null bulk string.
    pub fn null(&mut self) {
        self.out.extend_from_slice(match self.version {
            RespVersion::Resp2 => b"$-1\r\n",
            RespVersion::Resp3 => b"_\r\n",
        });
    }

    /// No array (a blocking pop that timed out): RESP2's null array.
    pub fn null_array(&mut self) {
        self.out.extend_from_slice(match self.version {
            RespVersion::Resp2 => b"*-1\r\n",
            RespVersion::Resp3 => b"_\r\n",
        });
    }

    /// An array of `len` replies, written next.
    pub fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    /// A map of `pairs` key and value replies, written next (key, value, key, ...).
    pub fn map(&mut self, pairs: usize) {
        match self.version {
            RespVersion::Resp2 => self.header(b'*', 2 * pairs),
            RespVersion::Resp3 => self.header(b'%', pairs),
        }
    }

    /// A set of `len` replies, written next.
    pub fn set(&mut self, len: usize) {
        match self.version {
            RespVersion::Resp2 => self.header(b'*', len),
            RespVersion::Resp3 => self.header(b'~', len),
        }
    }

    /// A push of `len` replies, written next. RESP2 has no pushes: a RESP2 client gets
    /// its pub/sub messages as arrays.
    pub fn push(&mut self, len: usize) {
        match self.version {
            RespVersion::Resp2 => self.header(b'*', len),
            RespVersion::Resp3 => self.header(b'>', len),
        }
    }

    /// A double, in the shortest text that reads back the same (`1`, `0.1`, `1e300`,
    /// `inf`, `nan`), as Redis writes it.
    pub fn double(&mut self, value: f64) {
        let mut text = DoubleText::default();
        text.format(value);
        match self.version {
            RespVersion::Resp2 => self.bulk(text.as_bytes()),
            RespVersion::Resp3 => {
                self.out.push(b',');
                self.out.extend_from_slice(text.as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    pub fn boolean(&mut self, value: bool) {
        match self.version {
            RespVersion::Resp2 => self.integer(i64::from(value)),
            RespVersion::Resp3 => self.out.extend_from_slice(if value { b"#t\r\n" } else { b"#f\r\n" }),
        }
    }

    /// Text for people, in `format` (`txt`, `mkd`): RESP2 gets the text alone.
    pub fn verbatim(&mut self, format: &[u8; 3], text: impl AsRef<[u8]>) {
        let text = text.as_ref();
        match self.version {
            RespVersion::Resp2 => self.bulk(text),
            RespVersion::Resp3 => {
                self.header(b'=', format.len() + 1 + text.len());
                self.out.extend_from_slice(format);
                self.out.push(b':');
                self.out.extend_from_slice(text);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn header(&mut self, kind: u8, len: usize) {
        self.out.push(kind);
        push_u64(self.out, len as u64);
        self.out.extend_from_slice(b"\r\n");
    }

    fn line(&mut self, kind: u8, text: &[u8]) {
        self.out.push(kind);
        if text.iter().any(|&byte| byte == b'\r' || byte == b'\n') {
            let spaced = text
                .iter()
                .map(|&byte| if byte == b'\r' || byte == b'\n' { b' ' } else { byte });
            self.out.extend(spaced);
        } else {
            self.out.extend_from_slice(text);
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

/// Decimal digits without the formatting machinery: every reply header goes through here.
fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A double's text, formatted on the stack. 32 bytes hold the longest shortest
/// round-trip form (`-2.2250738585072014e-308`, 24 bytes).
#[derive(Default)]
struct DoubleText {
    bytes: [u8; 32],
    len: usize,
}

impl DoubleText {
    fn format(&mut self, value: f64) {
        if value.is_nan() {
            let _ = self.write_str("nan");
            return;
        }
        // Debug is the shortest text that reads back the same, in exponent form for
        // very large and small values (Display would write 300 zeros for 1e300), and
        // prints `inf` and `-inf` as Redis does.
        let _ = write!(self, "{value:?}");
        // Redis writes an integral double without a fraction.
        if self.as_bytes().ends_with(b".0") {
            self.len -= 2;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for DoubleText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

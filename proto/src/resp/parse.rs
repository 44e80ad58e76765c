//! Requests of the Redis protocol, parsed where they were read: a command is a list of
//! [`Arg`]s, ranges of the caller's input, so a pipelined batch is parsed without copying
//! an argument. Only an inline argument with quotes or escapes is rewritten, into the
//! parser's side buffer.
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what clients
//! send) or an inline command (`GET k\r\n`, what people type), split as Redis splits it
//! (`sdssplitargs`: quotes and escapes). Every length is checked against
//! [`RequestLimits`] as soon as its line is read, before the parser waits for what it
//! claims, so what a connection buffers is bounded by the limits, never by a claim.
//!
//! A command may arrive in pieces: the parser remembers how far it got, so bytes are not
//! scanned again when more arrive. Errors carry Redis's messages where Redis has them,
//! since clients show them, and are final: the connection answers `-ERR <message>` and
//! closes.

use std::fmt;
use std::mem;
use std::ops::Range;

use crate::limits::{
    CREDENTIALS_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX, KEY_BYTES_MAX, RESP_ARRAY_LEN_MAX, RESP_BULK_BYTES_MAX,
    RESP_COMMAND_BYTES_MAX, RESP_HEADER_LINE_BYTES_MAX, RESP_INLINE_BYTES_MAX, RESP_UNAUTHENTICATED_ARRAY_LEN_MAX,
    RESP_UNAUTHENTICATED_BULK_BYTES_MAX, VALUE_BYTES_MAX,
};

// The limits' relations, checked when this crate compiles.
const _: () = {
    // A SET of the largest key and value: each is one argument, and both fit one command.
    assert!(RESP_BULK_BYTES_MAX >= VALUE_BYTES_MAX && RESP_BULK_BYTES_MAX >= KEY_BYTES_MAX);
    assert!(RESP_COMMAND_BYTES_MAX >= FRAME_PAYLOAD_BYTES_MAX);
    // An AUTH before authentication carries a whole credential.
    assert!(RESP_UNAUTHENTICATED_BULK_BYTES_MAX >= CREDENTIALS_BYTES_MAX);
    // The shortest invalid length line must be refusable: `$`, a sign, 19 digits, `\r\n`.
    assert!(RESP_HEADER_LINE_BYTES_MAX > 23);
};

/// One limit on what a request claims: its value, and the name errors give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    /// The constant's name in lower case, as clients see it in the error.
    pub name: &'static str,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.max)
    }
}

/// What one command may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Arguments of one command, its name included.
    pub arguments: Limit,
    /// Bytes of one argument.
    pub argument_bytes: Limit,
    /// Bytes of one array command, its length lines included.
    pub command_bytes: Limit,
}

impl RequestLimits {
    /// An authenticated connection's.
    pub const AUTHENTICATED: RequestLimits = RequestLimits {
        arguments: Limit {
            max: RESP_ARRAY_LEN_MAX,
            name: "resp_array_len_max",
        },
        argument_bytes: Limit {
            max: RESP_BULK_BYTES_MAX,
            name: "resp_bulk_bytes_max",
        },
        command_bytes: Limit {
            max: RESP_COMMAND_BYTES_MAX,
            name: "resp_command_bytes_max",
        },
    };

    /// A connection's until it authenticates, like Redis's: room for `AUTH` and `HELLO`,
    /// not for a client nobody knows to make the server buffer much. The command limit
    /// is the authenticated one: the other two keep a command far below it.
    pub const UNAUTHENTICATED: RequestLimits = RequestLimits {
        arguments: Limit {
            max: RESP_UNAUTHENTICATED_ARRAY_LEN_MAX,
            name: "resp_unauthenticated_array_len_max",
        },
        argument_bytes: Limit {
            max: RESP_UNAUTHENTICATED_BULK_BYTES_MAX,
            name: "resp_unauthenticated_bulk_bytes_max",
        },
        command_bytes: RequestLimits::AUTHENTICATED.command_bytes,
    };
}

/// Why a request cannot be parsed. Every variant is final: the stream is out of step, so
/// the connection answers the message as an error and closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: too big mbulk count string")]
    MultibulkLengthLineTooLong,
    #[error("Protocol error: too big bulk count string")]
    BulkLengthLineTooLong,
    #[error("Protocol error: expected '$', got '{}'", .got.escape_ascii())]
    ExpectedBulk { got: u8 },
    #[error("Protocol error: expected CRLF after a bulk string of {len} bytes")]
    BulkNotTerminated { len: usize },
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// `count` is what an array claims, or (inline) the first argument past the limit.
    #[error("Protocol error: {count} arguments exceed {limit}")]
    TooManyArguments { count: u64, limit: Limit },
    #[error("Protocol error: an argument of {bytes} bytes exceeds {limit}")]
    ArgumentTooLong { bytes: u64, limit: Limit },
    /// `bytes` is where the argument that crossed the limit would end.
    #[error("Protocol error: a command of at least {bytes} bytes exceeds {limit}")]
    CommandTooLong { bytes: u64, limit: Limit },
}

/// What [`RequestParser::parse`] found at the start of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The input ends inside a command. Call again with the same bytes and more after
    /// them (and the same `args`); nothing of the input is consumed yet. The command
    /// needs at least `wanted` bytes of input before the parser can go on: a size the
    /// limits admit, so a caller may grow its buffer to it.
    Incomplete { wanted: usize },
    /// A command, its arguments in `args`, in the first `consumed` bytes.
    Command { consumed: usize },
    /// `consumed` bytes with no command in them, which Redis ignores: an empty line,
    /// `*0`, `*-1`.
    Skipped { consumed: usize },
}

/// Where one argument's bytes are; [`RequestParser::arg`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Bytes of the input, as sent.
    Input(Range<usize>),
    /// Bytes of the parser's side buffer: an inline argument with its quotes and escapes
    /// resolved.
    Unescaped(Range<usize>),
}

impl Arg {
    pub fn len(&self) -> usize {
        match self {
            Arg::Input(range) | Arg::Unescaped(range) => range.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far the command at the start of the input was parsed when the input ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Start,
    /// An inline command with no newline in its first `searched` bytes.
    Inline {
        searched: usize,
    },
    /// An array of `count` arguments, the first `parsed` in `args`, the next one's length
    /// line at `next`.
    Array {
        count: usize,
        next: usize,
        parsed: usize,
    },
}

/// Parses the requests of one connection, one command per call.
#[derive(Debug)]
pub struct RequestParser {
    limits: RequestLimits,
    /// The unescaped inline arguments of the last command.
    unescaped: Vec<u8>,
    progress: Progress,
}

impl RequestParser {
    pub fn new(limits: RequestLimits) -> RequestParser {
        RequestParser {
            limits,
            unescaped: Vec::new(),
            progress: Progress::Start,
        }
    }

    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// Applies `limits` from the next command on (a command in progress starts over, so
    /// what it already claimed is checked against them too).
    pub fn set_limits(&mut self, limits: RequestLimits) {
        self.limits = limits;
        self.progress = Progress::Start;
    }

    /// Parses the command at the start of `input` into `args` (cleared first), ranges of
    /// `input` valid until the next call. Call again with the rest of the input for the
    /// next command of a pipeline.
    ///
    /// After [`Parsed::Incomplete`], the next call resumes where this one stopped if
    /// `input` starts with the same bytes and `args` is as this call left it; otherwise
    /// it starts over.
    pub fn parse(&mut self, input: &[u8], args: &mut Vec<Arg>) -> Result<Parsed, RespError> {
        match self.resume(input, args) {
            Progress::Start => self.start(input, args),
            Progress::Inline { searched } => self.inline(input, searched, args),
            Progress::Array { count, next, .. } => self.bulks(input, count, next, args),
        }
    }

    /// The bytes of `arg`, an argument of the last command parsed from `input`.
    pub fn arg<'a>(&'a self, input: &'a [u8], arg: &Arg) -> &'a [u8] {
        match arg {
            Arg::Input(range) => &input[range.clone()],
            Arg::Unescaped(range) => &self.unescaped[range.clone()],
        }
    }

    /// The bytes of each of `args`, the last command parsed from `input`.
    pub fn args<'a>(&'a self, input: &'a [u8], args: &'a [Arg]) -> impl Iterator<Item = &'a [u8]> + 'a {
        args.iter().map(move |arg| self.arg(input, arg))
    }

    /// Where to go on from: the progress left by an incomplete command, unless the
    /// caller's input or args no longer fit it.
    fn resume(&mut self, input: &[u8], args: &[Arg]) -> Progress {
        let progress = mem::replace(&mut self.progress, Progress::Start);
        let fits = match progress {
            Progress::Start => true,
            Progress::Inline { searched } => searched <= input.len(),
            Progress::Array { next, parsed, .. } => next <= input.len() && parsed == args.len(),
        };
        if fits {
            progress
        } else {
            Progress::Start
        }
    }

    fn wait(&mut self, progress: Progress, wanted: usize) -> Parsed {
        self.progress = progress;
        Parsed::Incomplete { wanted }
    }

    fn start(&mut self, input: &[u8], args: &mut Vec<Arg>) -> Result<Parsed, RespError> {
        args.clear();
        match input.first() {
            None => Ok(Parsed::Incomplete { wanted: 1 }),
            Some(b'*') => self.array(input, args),
            Some(_) => self.inline(input, 0, args),
        }
    }

    fn array(&mut self, input: &[u8], args: &mut Vec<Arg>) -> Result<Parsed, RespError> {
        let too_long = RespError::MultibulkLengthLineTooLong;
        let Some((count, first)) = header_line(input, 0, too_long, RespError::InvalidMultibulkLength)? else {
            // A length line is short: parsing it again costs less than remembering it.
            return Ok(self.wait(Progress::Start, input.len() + 1));
        };
        let count = match count {
            -1 | 0 => return Ok(Parsed::Skipped { consumed: first }),
            1.. => count as u64,
            _ => return Err(RespError::InvalidMultibulkLength),
        };
        let limit = self.limits.arguments;
        if count > limit.max as u64 {
            return Err(RespError::TooManyArguments { count, limit });
        }
        self.bulks(input, count as usize, first, args)
    }

    /// The array's arguments from the one whose length line is at `next`.
    fn bulks(&mut self, input: &[u8], count: usize, mut next: usize, args: &mut Vec<Arg>) -> Result<Parsed, RespError> {
        while args.len() < count {
            match self.bulk(input, next)? {
                Bulk::Whole { bytes, end } => {
                    args.push(Arg::Input(bytes));
                    next = end;
                }
                Bulk::Incomplete { wanted } => {
                    let progress = Progress::Array {
                        count,
                        next,
                        parsed: args.len(),
                    };
                    return Ok(self.wait(progress, wanted));
                }
            }
        }
        Ok(Parsed::Command { consumed: next })
    }

    /// The bulk string whose length line is at `start`; its claim is checked before the
    /// parser waits for it.
    fn bulk(&self, input: &[u8], start: usize) -> Result<Bulk, RespError> {
        let Some(&kind) = input.get(start) else {
            return Ok(Bulk::Incomplete { wanted: start + 1 });
        };
        if kind != b'$' {
            return Err(RespError::ExpectedBulk { got: kind });
        }
        let too_long = RespError::BulkLengthLineTooLong;
        let Some((len, body)) = header_line(input, start, too_long, RespError::InvalidBulkLength)? else {
            return Ok(Bulk::Incomplete {
                wanted: input.len() + 1,
            });
        };
        let len = u64::try_from(len).map_err(|_| RespError::InvalidBulkLength)?;
        let limit = self.limits.argument_bytes;
        if len > limit.max as u64 {
            return Err(RespError::ArgumentTooLong { bytes: len, limit });
        }
        // No overflow: `len` is at most `i64::MAX`, `body` is small.
        let end = body as u64 + len + 2;
        let limit = self.limits.command_bytes;
        if end > limit.max as u64 {
            return Err(RespError::CommandTooLong { bytes: end, limit });
        }
        let (len, end) = (len as usize, end as usize);
        if input.len() < end {
            return Ok(Bulk::Incomplete { wanted: end });
        }
        if &input[body + len..end] != b"\r\n" {
            return Err(RespError::BulkNotTerminated { len });
        }
        Ok(Bulk::Whole {
            bytes: body..body + len,
            end,
        })
    }

    /// An inline command, its newline not in the first `searched` bytes.
    fn inline(&mut self, input: &[u8], searched: usize, args: &mut Vec<Arg>) -> Result<Parsed, RespError> {
        // The longest line's `\r\n` is past it.
        let window = input.len().min(RESP_INLINE_BYTES_MAX + 2);
        let Some(found) = input[searched..window].iter().position(|&byte| byte == b'\n') else {
            let past_limit = input.get(RESP_INLINE_BYTES_MAX).is_some_and(|&byte| byte != b'\r');
            if past_limit || input.len() > RESP_INLINE_BYTES_MAX + 1 {
                return Err(RespError::InlineTooLong);
            }
            return Ok(self.wait(Progress::Inline { searched: window }, input.len() + 1));
        };
        let newline = searched + found;
        let line_end = match newline.checked_sub(1) {
            Some(cr) if input[cr] == b'\r' => cr,
            _ => newline,
        };
        if line_end > RESP_INLINE_BYTES_MAX {
            return Err(RespError::InlineTooLong);
        }
        self.split_line(&input[..line_end], args)?;
        let consumed = newline + 1;
        Ok(if args.is_empty() {
            Parsed::Skipped { consumed }
        } else {
            Parsed::Command { consumed }
        })
    }

    /// Splits an inline line into arguments as `sdssplitargs` does.
    fn split_line(&mut self, line: &[u8], args: &mut Vec<Arg>) -> Result<(), RespError> {
        self.unescaped.clear();
        let mut pos = 0;
        loop {
            pos += line[pos..].iter().take_while(|&&byte| is_space(byte)).count();
            if pos == line.len() {
                return Ok(());
            }
            let limit = self.limits.arguments;
            if args.len() >= limit.max {
                let count = args.len() as u64 + 1;
                return Err(RespError::TooManyArguments { count, limit });
            }
            let (arg, end) = self.inline_arg(line, pos)?;
            let limit = self.limits.argument_bytes;
            if arg.len() > limit.max {
                let bytes = arg.len() as u64;
                return Err(RespError::ArgumentTooLong { bytes, limit });
            }
            args.push(arg);
            pos = end;
        }
    }

    /// The inline argument at `start`, and where it ends: a range of the line unless it
    /// has quotes.
    fn inline_arg(&mut self, line: &[u8], start: usize) -> Result<(Arg, usize), RespError> {
        let plain_end = line[start..]
            .iter()
            .position(|&byte| is_space(byte) || byte == b'"' || byte == b'\'')
            .map_or(line.len(), |plain| start + plain);
        if line.get(plain_end).is_none_or(|&byte| is_space(byte)) {
            return Ok((Arg::Input(start..plain_end), plain_end));
        }
        let from = self.unescaped.len();
        self.unescaped.extend_from_slice(&line[start..plain_end]);
        let end = self.unescape(line, plain_end)?;
        Ok((Arg::Unescaped(from..self.unescaped.len()), end))
    }

    /// Appends the rest of an argument from `pos` to the side buffer, quotes resolved;
    /// returns where the argument ends.
    fn unescape(&mut self, line: &[u8], mut pos: usize) -> Result<usize, RespError> {
        while let Some(&byte) = line.get(pos) {
            pos = match byte {
                b'"' => self.double_quoted(line, pos + 1)?,
                b'\'' => self.single_quoted(line, pos + 1)?,
                _ if is_space(byte) => return Ok(pos),
                _ => {
                    self.unescaped.push(byte);
                    pos + 1
                }
            };
        }
        Ok(pos)
    }

    /// A double-quoted string from just past its quote, with `\xHH` and C escapes.
    fn double_quoted(&mut self, line: &[u8], mut pos: usize) -> Result<usize, RespError> {
        loop {
            match &line[pos..] {
                [] => return Err(RespError::UnbalancedQuotes),
                [b'"', ..] => return after_quote(line, pos + 1),
                [b'\\', escaped @ ..] if !escaped.is_empty() => {
                    let (byte, taken) = unescape_byte(escaped);
                    self.unescaped.push(byte);
                    pos += 1 + taken;
                }
                [byte, ..] => {
                    self.unescaped.push(*byte);
                    pos += 1;
                }
            }
        }
    }

    /// A single-quoted string from just past its quote: only `\'` is an escape.
    fn single_quoted(&mut self, line: &[u8], mut pos: usize) -> Result<usize, RespError> {
        loop {
            match &line[pos..] {
                [] => return Err(RespError::UnbalancedQuotes),
                [b'\\', b'\'', ..] => {
                    self.unescaped.push(b'\'');
                    pos += 2;
                }
                [b'\'', ..] => return after_quote(line, pos + 1),
                [byte, ..] => {
                    self.unescaped.push(*byte);
                    pos += 1;
                }
            }
        }
    }
}

/// A bulk string of an array.
enum Bulk {
    Incomplete {
        wanted: usize,
    },
    /// Its bytes, and where what follows it starts.
    Whole {
        bytes: Range<usize>,
        end: usize,
    },
}

/// The number of the length line at `start` (its type byte) and where the line ends, or
/// `None` until its `\r\n` has arrived.
fn header_line(
    input: &[u8],
    start: usize,
    too_long: RespError,
    invalid: RespError,
) -> Result<Option<(i64, usize)>, RespError> {
    // The `\r` must come early enough for the `\n` to fit in the longest line.
    let cr_end = start + RESP_HEADER_LINE_BYTES_MAX - 1;
    let Some(cr) = input[start..input.len().min(cr_end)]
        .iter()
        .position(|&byte| byte == b'\r')
    else {
        return if input.len() >= cr_end { Err(too_long) } else { Ok(None) };
    };
    let cr = start + cr;
    match input.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => decimal(&input[start + 1..cr]).map(|n| Some((n, cr + 2))).ok_or(invalid),
        Some(_) => Err(invalid),
    }
}

/// A decimal integer as Redis's `string2ll` reads it: an optional `-`, no `+`, no
/// leading zeros, no spaces, within `i64`.
fn decimal(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    digits.iter().try_fold(0i64, |value, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        let value = value.checked_mul(10)?;
        // Built negative when negative, so `i64::MIN` is reachable.
        if negative {
            value.checked_sub(digit)
        } else {
            value.checked_add(digit)
        }
    })
}

/// The byte of the escape after a `\` in double quotes, and how many bytes it took.
fn unescape_byte(escaped: &[u8]) -> (u8, usize) {
    if let [b'x', high, low, ..] = escaped {
        if let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) {
            return ((high << 4) | low, 3);
        }
    }
    let byte = match escaped[0] {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 0x08,
        b'a' => 0x07,
        other => other,
    };
    (byte, 1)
}

fn hex_digit(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// Where the argument ends after a closing quote: Redis refuses `"a"b` rather than
/// guess.
fn after_quote(line: &[u8], pos: usize) -> Result<usize, RespError> {
    match line.get(pos) {
        Some(&byte) if !is_space(byte) => Err(RespError::UnbalancedQuotes),
        _ => Ok(pos),
    }
}

/// What separates inline arguments: C's `isspace`, as `sdssplitargs` uses.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

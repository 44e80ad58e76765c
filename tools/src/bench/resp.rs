//! A minimal RESP2 codec for the Redis driver: command encoding into a reused buffer, and
//! an incremental reply parser that never allocates and accepts input cut anywhere.

use crate::bench::keys::write_decimal;

/// Longest simple-string, error or integer line accepted; Redis's own replies to the
/// commands sent here are far shorter, so anything longer is a broken stream.
pub const REPLY_LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest bulk reply accepted (Redis's own proto-max-bulk-len default is 512 MiB; a
/// benchmark's values are far smaller, and the read buffer grows to hold one reply).
pub const BULK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One reply, borrowing from the input it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'input> {
    /// `+OK`
    Simple(&'input [u8]),
    /// `-ERR ...`
    Error(&'input [u8]),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(&'input [u8]),
    /// `$-1`: the key does not exist.
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unexpected reply type byte {0:#04x}")]
    UnknownType(u8),
    #[error("arrays are not expected as replies to GET, SET or INCR")]
    Array,
    #[error("line longer than reply_line_bytes_max ({REPLY_LINE_BYTES_MAX})")]
    LineTooLong,
    #[error("bulk of {0} bytes exceeds bulk_bytes_max ({BULK_BYTES_MAX})")]
    BulkTooLarge(i64),
    #[error("line is not terminated by CRLF")]
    MissingCrlf,
    #[error("invalid integer {0:?}")]
    InvalidInteger(String),
}

/// Parses one reply from the start of `input`. `Ok(None)`: the input holds only part of
/// a reply (read more and call again with the same start); `Ok(Some((reply, used)))`:
/// the reply took the first `used` bytes.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some(&kind) = input.first() else {
        return Ok(None);
    };
    let Some((line, line_end)) = line_at(input, 1)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(parse_integer(line)?),
        b'$' => {
            let length = parse_integer(line)?;
            if length == -1 {
                return Ok(Some((Reply::Null, line_end)));
            }
            let bulk_bytes = usize::try_from(length)
                .ok()
                .filter(|&bytes| bytes <= BULK_BYTES_MAX)
                .ok_or(RespError::BulkTooLarge(length))?;
            let data_end = line_end + bulk_bytes;
            let Some(terminator) = input.get(data_end..data_end + 2) else {
                return Ok(None);
            };
            if terminator != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            return Ok(Some((Reply::Bulk(&input[line_end..data_end]), data_end + 2)));
        }
        b'*' => return Err(RespError::Array),
        other => return Err(RespError::UnknownType(other)),
    };
    Ok(Some((reply, line_end)))
}

/// The line starting at `start` (without CRLF) and the offset just past its CRLF.
fn line_at(input: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &input[start..];
    match rest.iter().position(|&byte| byte == b'\n') {
        Some(newline) => {
            if newline == 0 || rest[newline - 1] != b'\r' {
                return Err(RespError::MissingCrlf);
            }
            if newline - 1 > REPLY_LINE_BYTES_MAX {
                return Err(RespError::LineTooLong);
            }
            Ok(Some((&rest[..newline - 1], start + newline + 1)))
        }
        None if rest.len() > REPLY_LINE_BYTES_MAX + 1 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_integer(line: &[u8]) -> Result<i64, RespError> {
    let invalid = || RespError::InvalidInteger(String::from_utf8_lossy(line).into_owned());
    let (negative, digits) = match line.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, line),
    };
    if digits.is_empty() {
        return Err(invalid());
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(invalid());
        }
        let digit = i64::from(digit - b'0');
        // Accumulating negatively reaches i64::MIN without overflowing first.
        value = value
            .checked_mul(10)
            .and_then(|value| {
                if negative {
                    value.checked_sub(digit)
                } else {
                    value.checked_add(digit)
                }
            })
            .ok_or_else(invalid)?;
    }
    Ok(value)
}

/// Appends `parts` as one RESP command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    write_decimal(out, parts.len() as u64);
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        write_decimal(out, part.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Reply<'_> {
        let (reply, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!(used, input.len(), "{reply:?} used {used} of {}", input.len());
        reply
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple(b"OK"));
        assert_eq!(whole(b"-ERR wrong type\r\n"), Reply::Error(b"ERR wrong type"));
        assert_eq!(whole(b":42\r\n"), Reply::Integer(42));
        assert_eq!(whole(b":-7\r\n"), Reply::Integer(-7));
        assert_eq!(whole(b":-9223372036854775808\r\n"), Reply::Integer(i64::MIN));
        assert_eq!(whole(b"$3\r\nabc\r\n"), Reply::Bulk(b"abc"));
        assert_eq!(whole(b"$0\r\n\r\n"), Reply::Bulk(b""));
        assert_eq!(
            whole(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(b"a\r\nb"),
            "bulk data may hold CRLF"
        );
        assert_eq!(whole(b"$-1\r\n"), Reply::Null);
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_not_an_error() {
        let stream: &[u8] = b"+OK\r\n:12\r\n$5\r\nhello\r\n$-1\r\n-ERR no\r\n";
        let expected = [
            Reply::Simple(b"OK"),
            Reply::Integer(12),
            Reply::Bulk(b"hello"),
            Reply::Null,
            Reply::Error(b"ERR no"),
        ];
        let mut start = 0;
        for want in expected {
            let mut end = start;
            let (reply, used) = loop {
                match parse_reply(&stream[start..end]).unwrap() {
                    Some(parsed) => break parsed,
                    None => {
                        assert!(end < stream.len(), "ran out of input waiting for {want:?}");
                        end += 1;
                    }
                }
            };
            assert_eq!(reply, want);
            start += used;
            assert_eq!(start, end, "a reply is complete exactly at its last byte");
        }
        assert_eq!(start, stream.len());
        assert_eq!(parse_reply(b"").unwrap(), None);
    }

    #[test]
    fn several_replies_in_one_read_are_taken_one_at_a_time() {
        let input: &[u8] = b"+OK\r\n+OK\r\n:1\r\n";
        let (_, first) = parse_reply(input).unwrap().unwrap();
        let (_, second) = parse_reply(&input[first..]).unwrap().unwrap();
        assert_eq!(
            parse_reply(&input[first + second..]).unwrap(),
            Some((Reply::Integer(1), 4))
        );
    }

    #[test]
    fn broken_input_is_an_error() {
        assert_eq!(parse_reply(b"?x\r\n"), Err(RespError::UnknownType(b'?')));
        assert_eq!(parse_reply(b"*1\r\n"), Err(RespError::Array));
        assert_eq!(parse_reply(b"+OK\n"), Err(RespError::MissingCrlf));
        assert!(matches!(parse_reply(b":12a\r\n"), Err(RespError::InvalidInteger(_))));
        assert!(matches!(parse_reply(b":\r\n"), Err(RespError::InvalidInteger(_))));
        assert!(matches!(
            parse_reply(b":99999999999999999999\r\n"),
            Err(RespError::InvalidInteger(_))
        ));
        assert_eq!(parse_reply(b"$-2\r\n"), Err(RespError::BulkTooLarge(-2)));
        let too_large = format!("${}\r\n", BULK_BYTES_MAX + 1);
        assert!(matches!(
            parse_reply(too_large.as_bytes()),
            Err(RespError::BulkTooLarge(_))
        ));
        assert_eq!(parse_reply(b"$2\r\nabXY"), Err(RespError::MissingCrlf));
        let endless = [b'+'; REPLY_LINE_BYTES_MAX + 3];
        assert_eq!(parse_reply(&endless), Err(RespError::LineTooLong));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = b"leftover".to_vec();
        out.clear();
        encode_command(&mut out, &[b"SET", b"key:1", b"vv"]);
        encode_command(&mut out, &[b"GET", b"key:1"]);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$2\r\nvv\r\n*2\r\n$3\r\nGET\r\n$5\r\nkey:1\r\n"
        );
    }
}

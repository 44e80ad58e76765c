//! The parser driven with bytes as clients send them (whole, pipelined, in pieces, or
//! broken), and the encoder checked against literal replies.

use proptest::prelude::*;

use super::*;
use crate::limits::{
    RESP_ARRAY_LEN_MAX, RESP_BULK_BYTES_MAX, RESP_COMMAND_BYTES_MAX, RESP_INLINE_BYTES_MAX,
    RESP_UNAUTHENTICATED_ARRAY_LEN_MAX, RESP_UNAUTHENTICATED_BULK_BYTES_MAX,
};

/// The arguments of one command, copied out.
type CommandArgs = Vec<Vec<u8>>;

/// A request as clients send it: an array of bulk strings.
fn encode(args: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = ReplyWriter::new(&mut out, RespVersion::Resp2);
    writer.array(args.len());
    for arg in args {
        writer.bulk(arg);
    }
    out
}

fn parser() -> RequestParser {
    RequestParser::new(RequestLimits::AUTHENTICATED)
}

/// The outcome of parsing `input` whole with a fresh parser, and the arguments.
fn parse_with(limits: RequestLimits, input: &[u8]) -> Result<(Parsed, CommandArgs), RespError> {
    let mut parser = RequestParser::new(limits);
    let mut args = Vec::new();
    let parsed = parser.parse(input, &mut args)?;
    Ok((parsed, parser.args(input, &args).map(<[u8]>::to_vec).collect()))
}

fn parse(input: &[u8]) -> Result<(Parsed, CommandArgs), RespError> {
    parse_with(RequestLimits::AUTHENTICATED, input)
}

/// The one command `input` holds, all of it consumed.
fn command(input: &[u8]) -> CommandArgs {
    let (parsed, args) = parse(input).unwrap();
    assert_eq!(parsed, Parsed::Command { consumed: input.len() });
    args
}

fn error(input: &[u8]) -> RespError {
    parse(input).unwrap_err()
}

fn strings(args: &[&str]) -> CommandArgs {
    args.iter().map(|arg| arg.as_bytes().to_vec()).collect()
}

/// Every command of `input`, parsed one after another, skipped bytes skipped, and where
/// the bytes left over (an incomplete command) start.
fn commands(parser: &mut RequestParser, input: &[u8]) -> Result<(Vec<CommandArgs>, usize), RespError> {
    let mut args = Vec::new();
    let mut found = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        match parser.parse(rest, &mut args)? {
            Parsed::Incomplete { wanted } => {
                assert!(wanted > rest.len(), "wanted {wanted} of {} buffered", rest.len());
                return Ok((found, pos));
            }
            Parsed::Command { consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                found.push(parser.args(rest, &args).map(<[u8]>::to_vec).collect());
                pos += consumed;
            }
            Parsed::Skipped { consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                pos += consumed;
            }
        }
    }
}

#[test]
fn an_array_of_bulk_strings_is_a_command() {
    assert_eq!(
        command(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"),
        strings(&["SET", "k", "value"])
    );
    assert_eq!(command(b"*1\r\n$0\r\n\r\n"), vec![Vec::new()]);
    // Bulk strings are binary: CR, LF and NUL inside are bytes like others.
    assert_eq!(command(b"*1\r\n$4\r\n\r\n\0\n\r\n"), vec![b"\r\n\0\n".to_vec()]);
}

#[test]
fn array_arguments_are_ranges_of_the_input() {
    let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let mut args = Vec::new();
    parser().parse(input, &mut args).unwrap();
    assert_eq!(args, [Arg::Input(8..11), Arg::Input(17..18)]);
}

#[test]
fn inline_commands_split_on_spaces_and_tabs() {
    assert_eq!(command(b"PING\r\n"), strings(&["PING"]));
    assert_eq!(command(b"PING\n"), strings(&["PING"]));
    assert_eq!(command(b"  set \t k   v  \r\n"), strings(&["set", "k", "v"]));
    // A CR not before the newline separates, as in Redis.
    assert_eq!(command(b"get\rk\n"), strings(&["get", "k"]));
}

#[test]
fn plain_inline_arguments_are_ranges_of_the_input() {
    let input = b"set k v\r\n";
    let mut args = Vec::new();
    parser().parse(input, &mut args).unwrap();
    assert_eq!(args, [Arg::Input(0..3), Arg::Input(4..5), Arg::Input(6..7)]);
}

#[test]
fn inline_quotes_and_escapes_as_redis_cli() {
    assert_eq!(
        command(b"set \"a key\" 'a value'\r\n"),
        strings(&["set", "a key", "a value"])
    );
    let cases: &[(&[u8], &[u8])] = &[
        (br#""\x41\x7a\n\r\t\\\"\a\b""#, b"Az\n\r\t\\\"\x07\x08"),
        // Not two hex digits: `\x` is an `x`.
        (br#""\xZZ\x4""#, b"xZZx4"),
        // An unknown escape is the byte itself.
        (br#""\q\'""#, b"q'"),
        (br"'it\'s'", b"it's"),
        // In single quotes a backslash is a byte but before a quote.
        (br#"'a\b\"'"#, br#"a\b\""#),
        (br#""""#, b""),
        (b"''", b""),
        // Quotes inside an argument open a quoted part of it.
        (br#"foo"bar baz""#, b"foobar baz"),
        (br"x'y'", b"xy"),
    ];
    for (arg, expected) in cases {
        let input = [b"echo ", *arg, b"\r\n"].concat();
        assert_eq!(
            command(&input),
            [b"echo".to_vec(), expected.to_vec()],
            "{}",
            arg.escape_ascii()
        );
    }
}

#[test]
fn inline_arguments_with_quotes_are_unescaped_aside() {
    let input = b"set \"k\" v 'w'\r\n";
    let mut parser = parser();
    let mut args = Vec::new();
    parser.parse(input, &mut args).unwrap();
    assert_eq!(
        args,
        [
            Arg::Input(0..3),
            Arg::Unescaped(0..1),
            Arg::Input(8..9),
            Arg::Unescaped(1..2)
        ]
    );
    assert_eq!(parser.arg(input, &args[3]), b"w");
}

#[test]
fn unbalanced_quotes_are_refused() {
    for line in [
        &br#"get "k"#[..],
        br"get 'k",
        br#"get "k"x"#,
        br"get 'k'x",
        br#"get "a"'b'"#,
        br#"get "k\""#,
        br"get 'k\'",
    ] {
        let input = [line, b"\r\n"].concat();
        assert_eq!(error(&input), RespError::UnbalancedQuotes, "{}", line.escape_ascii());
    }
    assert_eq!(
        RespError::UnbalancedQuotes.to_string(),
        "Protocol error: unbalanced quotes in request"
    );
}

#[test]
fn empty_lines_and_empty_arrays_are_skipped() {
    for input in [&b"\r\n"[..], b"\n", b"  \t \r\n", b"*0\r\n", b"*-1\r\n"] {
        let (parsed, args) = parse(input).unwrap();
        assert_eq!(
            parsed,
            Parsed::Skipped { consumed: input.len() },
            "{}",
            input.escape_ascii()
        );
        assert!(args.is_empty());
    }
}

#[test]
fn a_pipeline_parses_command_by_command() {
    let mut input = Vec::new();
    for i in 0..16 {
        input.extend(encode(&[
            b"SET".to_vec(),
            format!("key:{i}").into_bytes(),
            b"xxx".to_vec(),
        ]));
    }
    input.extend_from_slice(b"\r\nPING\r\n*0\r\n");
    input.extend(encode(&["GET", "key:0"]));
    let (found, end) = commands(&mut parser(), &input).unwrap();
    assert_eq!(end, input.len());
    assert_eq!(found.len(), 18);
    assert_eq!(found[15], strings(&["SET", "key:15", "xxx"]));
    assert_eq!(found[16], strings(&["PING"]));
    assert_eq!(found[17], strings(&["GET", "key:0"]));
}

#[test]
fn a_command_in_pieces_is_incomplete_until_whole() {
    let mut input = encode(&["SET", "key", "value"]);
    input.extend_from_slice(b"set \"quoted key\" v\r\n\r\n");
    input.extend(encode(&["GET", "key"]));
    let expected = [
        strings(&["SET", "key", "value"]),
        strings(&["set", "quoted key", "v"]),
        strings(&["GET", "key"]),
    ];
    // Resumed: one parser fed one more byte at a time.
    let mut parser = parser();
    let mut args = Vec::new();
    let (mut start, mut found) = (0, Vec::new());
    for end in 1..=input.len() {
        let rest = &input[start..end];
        match parser.parse(rest, &mut args).unwrap() {
            Parsed::Incomplete { wanted } => assert!(wanted > rest.len()),
            Parsed::Command { consumed } => {
                assert_eq!(consumed, rest.len(), "a command is found as soon as it is whole");
                found.push(parser.args(rest, &args).map(<[u8]>::to_vec).collect::<Vec<_>>());
                start = end;
            }
            Parsed::Skipped { consumed } => {
                assert_eq!(consumed, rest.len());
                start = end;
            }
        }
    }
    assert_eq!(found, expected);
    // From scratch: a fresh parser at every cut.
    for cut in 0..input.len() {
        let (found, end) = commands(&mut self::parser(), &input[..cut]).unwrap();
        assert!(found.len() <= 3 && end <= cut);
        assert_eq!(found, expected[..found.len()]);
    }
}

#[test]
fn a_resumed_command_starts_over_if_args_were_cleared() {
    let input = encode(&["SET", "k", "v"]);
    let mut parser = parser();
    let mut args = Vec::new();
    assert!(matches!(
        parser.parse(&input[..15], &mut args),
        Ok(Parsed::Incomplete { .. })
    ));
    args.clear();
    assert_eq!(
        parser.parse(&input, &mut args),
        Ok(Parsed::Command { consumed: input.len() })
    );
    assert_eq!(args.len(), 3);
}

#[test]
fn incomplete_wants_what_the_claim_says() {
    assert_eq!(parse(b""), Ok((Parsed::Incomplete { wanted: 1 }, vec![])));
    assert_eq!(
        parse(b"*2\r\n$3\r\nGET\r\n$5\r\nk").unwrap().0,
        Parsed::Incomplete { wanted: 24 }
    );
    assert_eq!(parse(b"*2\r\n$3\r").unwrap().0, Parsed::Incomplete { wanted: 8 });
}

#[test]
fn lengths_must_be_decimal_numbers() {
    for header in [
        "*abc",
        "*",
        "*01",
        "*+1",
        "*1 ",
        "* 1",
        "*-0",
        "*-2",
        "*99999999999999999999",
        "*1\rx",
    ] {
        let input = format!("{header}\r\n");
        assert_eq!(error(input.as_bytes()), RespError::InvalidMultibulkLength, "{header}");
    }
    for header in ["$abc", "$", "$01", "$+1", "$-1", "$-5", "$9223372036854775808", "$1\rx"] {
        let input = format!("*1\r\n{header}\r\n");
        assert_eq!(error(input.as_bytes()), RespError::InvalidBulkLength, "{header}");
    }
    assert_eq!(
        RespError::InvalidMultibulkLength.to_string(),
        "Protocol error: invalid multibulk length"
    );
    assert_eq!(
        RespError::InvalidBulkLength.to_string(),
        "Protocol error: invalid bulk length"
    );
}

#[test]
fn an_array_holds_bulk_strings_only() {
    assert_eq!(error(b"*2\r\n$1\r\na\r\n:1\r\n"), RespError::ExpectedBulk { got: b':' });
    assert_eq!(error(b"*1\r\nX"), RespError::ExpectedBulk { got: b'X' });
    assert_eq!(
        RespError::ExpectedBulk { got: b'X' }.to_string(),
        "Protocol error: expected '$', got 'X'"
    );
    assert_eq!(
        RespError::ExpectedBulk { got: b'\r' }.to_string(),
        "Protocol error: expected '$', got '\\r'"
    );
}

#[test]
fn a_bulk_string_ends_with_crlf() {
    assert_eq!(error(b"*1\r\n$3\r\nabcXY"), RespError::BulkNotTerminated { len: 3 });
    assert_eq!(error(b"*1\r\n$3\r\nabc\rX"), RespError::BulkNotTerminated { len: 3 });
    assert_eq!(error(b"*1\r\n$3\r\nabc\n\r"), RespError::BulkNotTerminated { len: 3 });
}

#[test]
fn length_lines_are_refused_before_their_end_when_too_long() {
    // The `\r` of the longest line is at 30, so 31 bytes without one are too many.
    let digits = "1".repeat(30);
    let line = format!("*{}", &digits[..29]);
    assert_eq!(parse(line.as_bytes()).unwrap().0, Parsed::Incomplete { wanted: 31 });
    let line = format!("*{digits}");
    assert_eq!(error(line.as_bytes()), RespError::MultibulkLengthLineTooLong);
    let line = format!("*1\r\n${digits}");
    assert_eq!(error(line.as_bytes()), RespError::BulkLengthLineTooLong);
    assert_eq!(
        RespError::MultibulkLengthLineTooLong.to_string(),
        "Protocol error: too big mbulk count string"
    );
    assert_eq!(
        RespError::BulkLengthLineTooLong.to_string(),
        "Protocol error: too big bulk count string"
    );
}

#[test]
fn too_many_arguments_are_refused_at_the_array_header() {
    let limit = RequestLimits::AUTHENTICATED.arguments;
    let input = format!("*{}\r\n", RESP_ARRAY_LEN_MAX);
    assert!(matches!(parse(input.as_bytes()).unwrap().0, Parsed::Incomplete { .. }));
    let input = format!("*{}\r\n", RESP_ARRAY_LEN_MAX + 1);
    let count = RESP_ARRAY_LEN_MAX as u64 + 1;
    assert_eq!(error(input.as_bytes()), RespError::TooManyArguments { count, limit });
    assert_eq!(
        RespError::TooManyArguments {
            count: 2_000_000,
            limit
        }
        .to_string(),
        "Protocol error: 2000000 arguments exceed resp_array_len_max (1048576)"
    );
}

#[test]
fn a_too_long_argument_is_refused_at_its_length_line() {
    let limit = RequestLimits::AUTHENTICATED.argument_bytes;
    let input = format!("*1\r\n${RESP_BULK_BYTES_MAX}\r\n");
    let wanted = input.len() + RESP_BULK_BYTES_MAX + 2;
    assert_eq!(parse(input.as_bytes()).unwrap().0, Parsed::Incomplete { wanted });
    let input = format!("*1\r\n${}\r\n", RESP_BULK_BYTES_MAX + 1);
    let bytes = RESP_BULK_BYTES_MAX as u64 + 1;
    assert_eq!(error(input.as_bytes()), RespError::ArgumentTooLong { bytes, limit });
    assert_eq!(
        RespError::ArgumentTooLong { bytes, limit }.to_string(),
        "Protocol error: an argument of 4194305 bytes exceeds resp_bulk_bytes_max (4194304)"
    );
    // Whatever i64 can say.
    let input = format!("*1\r\n${}\r\n", i64::MAX);
    assert!(matches!(error(input.as_bytes()), RespError::ArgumentTooLong { .. }));
}

#[test]
fn a_too_long_command_is_refused_at_the_length_line_crossing_the_limit() {
    let value = vec![b'v'; RESP_BULK_BYTES_MAX];
    let args = [&value[..], &value[..], &value[..], &value[..]];
    let mut input = encode(&args);
    let crossing = input.len() - (value.len() + 2);
    let limit = RequestLimits::AUTHENTICATED.command_bytes;
    assert!(input.len() > RESP_COMMAND_BYTES_MAX);
    let bytes = input.len() as u64;
    // The fourth value's length line is enough to refuse it.
    assert_eq!(error(&input[..crossing]), RespError::CommandTooLong { bytes, limit });
    // Three fit.
    input.truncate(crossing - format!("${}\r\n", value.len()).len());
    input[1] = b'3';
    let (parsed, found) = parse(&input).unwrap();
    assert_eq!(parsed, Parsed::Command { consumed: input.len() });
    assert_eq!(found, vec![value; 3]);
}

#[test]
fn tighter_limits_name_themselves() {
    let limits = RequestLimits {
        command_bytes: Limit {
            max: 19,
            name: "test_command_bytes_max",
        },
        ..RequestLimits::AUTHENTICATED
    };
    let error = parse_with(limits, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "Protocol error: a command of at least 20 bytes exceeds test_command_bytes_max (19)"
    );
}

#[test]
fn unauthenticated_limits_are_redis_s() {
    let unauthenticated = RequestLimits::UNAUTHENTICATED;
    let at = |input: &[u8]| parse_with(unauthenticated, input);
    let ten = format!("*{RESP_UNAUTHENTICATED_ARRAY_LEN_MAX}\r\n");
    assert!(matches!(at(ten.as_bytes()).unwrap().0, Parsed::Incomplete { .. }));
    let limit = unauthenticated.arguments;
    let count = RESP_UNAUTHENTICATED_ARRAY_LEN_MAX as u64 + 1;
    let eleven = format!("*{count}\r\n");
    assert_eq!(at(eleven.as_bytes()), Err(RespError::TooManyArguments { count, limit }));
    assert_eq!(
        at(b"a b c d e f g h i j k\r\n"),
        Err(RespError::TooManyArguments { count, limit })
    );
    assert_eq!(at(b"a b c d e f g h i j\r\n").unwrap().1.len(), 10);

    let limit = unauthenticated.argument_bytes;
    let bytes = RESP_UNAUTHENTICATED_BULK_BYTES_MAX as u64 + 1;
    let big = format!("*2\r\n$4\r\nAUTH\r\n${bytes}\r\n");
    assert_eq!(at(big.as_bytes()), Err(RespError::ArgumentTooLong { bytes, limit }));
    assert_eq!(
        RespError::ArgumentTooLong { bytes, limit }.to_string(),
        "Protocol error: an argument of 16385 bytes exceeds resp_unauthenticated_bulk_bytes_max (16384)"
    );
    let inline = [b"AUTH ".to_vec(), vec![b'p'; bytes as usize], b"\r\n".to_vec()].concat();
    assert_eq!(at(&inline), Err(RespError::ArgumentTooLong { bytes, limit }));
}

#[test]
fn limits_switch_between_commands() {
    let mut parser = RequestParser::new(RequestLimits::UNAUTHENTICATED);
    let mut args = Vec::new();
    let many = encode(&["x"; 11]);
    assert!(parser.parse(&many, &mut args).is_err());
    parser.set_limits(RequestLimits::AUTHENTICATED);
    assert_eq!(parser.limits(), RequestLimits::AUTHENTICATED);
    assert_eq!(
        parser.parse(&many, &mut args),
        Ok(Parsed::Command { consumed: many.len() })
    );
}

#[test]
fn inline_lines_are_refused_past_the_limit_even_before_their_newline() {
    let line = vec![b'a'; RESP_INLINE_BYTES_MAX];
    assert_eq!(
        parse(&line).unwrap().0,
        Parsed::Incomplete {
            wanted: RESP_INLINE_BYTES_MAX + 1
        }
    );
    assert_eq!(command(&[&line[..], b"\n"].concat()), vec![line.clone()]);
    assert_eq!(command(&[&line[..], b"\r\n"].concat()), vec![line.clone()]);
    // Its `\r` may come before its `\n` does.
    let wanted = RESP_INLINE_BYTES_MAX + 2;
    assert_eq!(
        parse(&[&line[..], b"\r"].concat()).unwrap().0,
        Parsed::Incomplete { wanted }
    );
    let longer = [&line[..], b"a"].concat();
    assert_eq!(error(&longer), RespError::InlineTooLong);
    assert_eq!(error(&[&longer[..], b"\n"].concat()), RespError::InlineTooLong);
    assert_eq!(error(&[&longer[..], b"\r\n"].concat()), RespError::InlineTooLong);
    assert_eq!(error(&[&line[..], b"\r\r"].concat()), RespError::InlineTooLong);
    assert_eq!(
        RespError::InlineTooLong.to_string(),
        "Protocol error: too big inline request"
    );
    // Resumed, the limit holds too.
    let mut parser = parser();
    let mut args = Vec::new();
    assert!(matches!(parser.parse(&line, &mut args), Ok(Parsed::Incomplete { .. })));
    assert_eq!(parser.parse(&longer, &mut args), Err(RespError::InlineTooLong));
}

fn args_strategy() -> impl Strategy<Value = CommandArgs> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20)
}

/// `arg` as redis-cli would quote it: every byte escaped, in double quotes.
fn quoted(arg: &[u8]) -> Vec<u8> {
    let mut out = b"\"".to_vec();
    for byte in arg {
        out.extend(format!("\\x{byte:02x}").bytes());
    }
    out.push(b'"');
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = commands(&mut parser(), &input);
    }

    #[test]
    fn arbitrary_bytes_after_a_command_never_panic(
        args in args_strategy(),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut input = encode(&args);
        input.truncate(cut.index(input.len() + 1));
        input.extend(tail);
        let _ = commands(&mut parser(), &input);
        let _ = commands(&mut RequestParser::new(RequestLimits::UNAUTHENTICATED), &input);
    }

    #[test]
    fn an_encoded_command_parses_back(args in args_strategy()) {
        let input = encode(&args);
        prop_assert_eq!(command(&input), args);
    }

    #[test]
    fn a_quoted_inline_command_parses_back(args in args_strategy()) {
        let mut input = args.iter().map(|arg| quoted(arg)).collect::<Vec<_>>().join(&b' ');
        input.extend_from_slice(b"\r\n");
        prop_assert_eq!(command(&input), args);
    }

    #[test]
    fn a_command_in_random_pieces_parses_once_whole(
        args in args_strategy(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input = encode(&args);
        let mut ends = cuts.iter().map(|cut| cut.index(input.len())).collect::<Vec<_>>();
        ends.sort();
        ends.push(input.len());
        let mut parser = parser();
        let mut parsed_args = Vec::new();
        for end in ends {
            let parsed = parser.parse(&input[..end], &mut parsed_args).unwrap();
            if end < input.len() {
                let incomplete = matches!(parsed, Parsed::Incomplete { wanted } if wanted > end);
                prop_assert!(incomplete, "{:?} at {}", parsed, end);
            } else {
                prop_assert_eq!(parsed, Parsed::Command { consumed: input.len() });
            }
        }
        let found = parser.args(&input, &parsed_args).map(<[u8]>::to_vec).collect::<Vec<_>>();
        prop_assert_eq!(found, args);
    }

    #[test]
    fn a_stream_of_commands_parses_in_order(
        stream in proptest::collection::vec(args_strategy(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input = stream.iter().flat_map(|args| encode(args)).collect::<Vec<_>>();
        // Whole.
        let (found, end) = commands(&mut parser(), &input).unwrap();
        prop_assert_eq!(end, input.len());
        prop_assert_eq!(&found, &stream);
        prop_assert_eq!(in_pieces(&input, &cuts), Ok((stream, input.len())));
    }

    #[test]
    fn pieces_parse_as_the_whole(
        parts in proptest::collection::vec(part_strategy(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let input = parts.concat();
        prop_assert_eq!(in_pieces(&input, &cuts), commands(&mut parser(), &input));
    }

    #[test]
    fn inline_like_bytes_never_panic(
        input in proptest::collection::vec(prop::sample::select(b" \t\"'\\xA0\r\n*$".to_vec()), 0..128),
    ) {
        let _ = commands(&mut parser(), &input);
    }
}

/// Every command of `input` read in pieces ending at `cuts`, each appended to what is
/// left unparsed, and how much of it was parsed.
fn in_pieces(input: &[u8], cuts: &[prop::sample::Index]) -> Result<(Vec<CommandArgs>, usize), RespError> {
    let mut ends = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect::<Vec<_>>();
    ends.sort();
    ends.push(input.len());
    let mut parser = parser();
    let (mut start, mut found) = (0, Vec::new());
    for end in ends {
        let (more, parsed) = commands(&mut parser, &input[start..end])?;
        found.extend(more);
        start += parsed;
    }
    Ok((found, start))
}

/// Something a client might send: a command, an inline one, a blank line, or junk.
fn part_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        args_strategy().prop_map(|args| encode(&args)),
        "[a-z \"'\\\\]{0,12}".prop_map(|line| format!("{line}\r\n").into_bytes()),
        Just(b"\r\n".to_vec()),
        Just(b"*0\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

/// What `write` writes, in each version.
fn replies(write: impl Fn(&mut ReplyWriter)) -> (Vec<u8>, Vec<u8>) {
    let mut resp2 = Vec::new();
    write(&mut ReplyWriter::new(&mut resp2, RespVersion::Resp2));
    let mut resp3 = Vec::new();
    write(&mut ReplyWriter::new(&mut resp3, RespVersion::Resp3));
    (resp2, resp3)
}

fn assert_replies(write: impl Fn(&mut ReplyWriter), resp2: &[u8], resp3: &[u8]) {
    let (two, three) = replies(write);
    assert_eq!(
        two.escape_ascii().to_string(),
        resp2.escape_ascii().to_string(),
        "RESP2"
    );
    assert_eq!(
        three.escape_ascii().to_string(),
        resp3.escape_ascii().to_string(),
        "RESP3"
    );
}

#[test]
fn replies_both_versions_share() {
    assert_replies(|w| w.ok(), b"+OK\r\n", b"+OK\r\n");
    assert_replies(|w| w.simple("PONG"), b"+PONG\r\n", b"+PONG\r\n");
    assert_replies(|w| w.error("ERR no"), b"-ERR no\r\n", b"-ERR no\r\n");
    assert_replies(|w| w.integer(0), b":0\r\n", b":0\r\n");
    assert_replies(|w| w.integer(-42), b":-42\r\n", b":-42\r\n");
    assert_replies(
        |w| w.integer(i64::MIN),
        b":-9223372036854775808\r\n",
        b":-9223372036854775808\r\n",
    );
    assert_replies(
        |w| w.integer(i64::MAX),
        b":9223372036854775807\r\n",
        b":9223372036854775807\r\n",
    );
    assert_replies(|w| w.bulk(b"a\r\nb"), b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n");
    assert_replies(|w| w.bulk(b""), b"$0\r\n\r\n", b"$0\r\n\r\n");
    assert_replies(|w| w.array(0), b"*0\r\n", b"*0\r\n");
    assert_replies(|w| w.array(12345), b"*12345\r\n", b"*12345\r\n");
}

#[test]
fn a_line_cannot_break_the_framing() {
    assert_replies(
        |w| w.error(b"WRONGTYPE a\r\nb\nc\r"),
        b"-WRONGTYPE a  b c \r\n",
        b"-WRONGTYPE a  b c \r\n",
    );
    assert_replies(|w| w.simple("a\nb"), b"+a b\r\n", b"+a b\r\n");
}

#[test]
fn replies_resp3_has_types_for() {
    assert_replies(|w| w.null(), b"$-1\r\n", b"_\r\n");
    assert_replies(|w| w.null_array(), b"*-1\r\n", b"_\r\n");
    assert_replies(
        |w| {
            w.map(2);
            w.bulk("a");
            w.integer(1);
            w.bulk("b");
            w.integer(2);
        },
        b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n",
        b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n",
    );
    assert_replies(|w| w.set(3), b"*3\r\n", b"~3\r\n");
    assert_replies(|w| w.push(3), b"*3\r\n", b">3\r\n");
    assert_replies(|w| w.boolean(true), b":1\r\n", b"#t\r\n");
    assert_replies(|w| w.boolean(false), b":0\r\n", b"#f\r\n");
    assert_replies(
        |w| w.verbatim(b"txt", "Some string"),
        b"$11\r\nSome string\r\n",
        b"=15\r\ntxt:Some string\r\n",
    );
}

#[test]
fn doubles_are_short_and_read_back() {
    assert_replies(|w| w.double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
    assert_replies(|w| w.double(3.0), b"$1\r\n3\r\n", b",3\r\n");
    assert_replies(|w| w.double(-0.0), b"$2\r\n-0\r\n", b",-0\r\n");
    assert_replies(|w| w.double(0.1), b"$3\r\n0.1\r\n", b",0.1\r\n");
    assert_replies(|w| w.double(1e300), b"$5\r\n1e300\r\n", b",1e300\r\n");
    assert_replies(|w| w.double(1.5e-7), b"$6\r\n1.5e-7\r\n", b",1.5e-7\r\n");
    assert_replies(|w| w.double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
    assert_replies(|w| w.double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n");
    assert_replies(|w| w.double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
    for value in [
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        5e-324,
        1.0 / 3.0,
        123456.789e10,
    ] {
        let (resp2, resp3) = replies(|w| w.double(value));
        let text = std::str::from_utf8(&resp3[1..resp3.len() - 2]).unwrap();
        assert_eq!(text.parse::<f64>().unwrap(), value, "{text}");
        assert!(resp2.ends_with(format!("{text}\r\n").as_bytes()));
    }
}

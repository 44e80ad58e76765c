//! Glob patterns over key names, with Redis's rules (`SCAN ... MATCH`, `KEYS`): `*` any
//! run of bytes, `?` any one byte, `[abc]`, `[^abc]` and `[a-z]` one byte of a class,
//! and `\x` the byte `x` itself. A class left open runs to the end of the pattern, and a
//! range written high to low means the same as low to high, as in Redis.
//!
//! Matching keeps one way back (to the last `*`) instead of recursing, so it takes at
//! most pattern length × name length steps, whatever the pattern: a client's pattern
//! cannot make a shard work exponentially long.

/// Whether `name` matches `pattern`.
pub fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut at_pattern, mut at_name) = (0, 0);
    // After a `*`: where the pattern goes on, and how much of the name the star covers.
    let mut back_to: Option<(usize, usize)> = None;
    while at_name < name.len() {
        if pattern.get(at_pattern) == Some(&b'*') {
            while pattern.get(at_pattern) == Some(&b'*') {
                at_pattern += 1;
            }
            back_to = Some((at_pattern, at_name));
            continue;
        }
        if at_pattern < pattern.len() {
            let (matched, next) = match_one(pattern, at_pattern, name[at_name]);
            if matched {
                at_pattern = next;
                at_name += 1;
                continue;
            }
        }
        // A mismatch: the last star takes one more byte, or there is no way back.
        let Some((after_star, covered)) = back_to else {
            return false;
        };
        back_to = Some((after_star, covered + 1));
        at_pattern = after_star;
        at_name = covered + 1;
    }
    pattern[at_pattern..].iter().all(|&byte| byte == b'*')
}

/// Whether the one-byte element at `at` (not a `*`) takes `byte`, and where the next
/// element starts.
fn match_one(pattern: &[u8], at: usize, byte: u8) -> (bool, usize) {
    match pattern[at] {
        b'?' => (true, at + 1),
        b'\\' if at + 1 < pattern.len() => (pattern[at + 1] == byte, at + 2),
        b'[' => match_class(pattern, at + 1, byte),
        literal => (literal == byte, at + 1),
    }
}

/// A class's answer for `byte`; `at` is just past its `[`.
fn match_class(pattern: &[u8], mut at: usize, byte: u8) -> (bool, usize) {
    let negated = pattern.get(at) == Some(&b'^');
    if negated {
        at += 1;
    }
    let mut matched = false;
    while let Some(&element) = pattern.get(at) {
        match element {
            b']' => return (matched != negated, at + 1),
            b'\\' if at + 1 < pattern.len() => {
                matched |= pattern[at + 1] == byte;
                at += 2;
            }
            low if pattern.get(at + 1) == Some(&b'-') && at + 2 < pattern.len() => {
                let high = pattern[at + 2];
                matched |= (low.min(high)..=low.max(high)).contains(&byte);
                at += 3;
            }
            single => {
                matched |= single == byte;
                at += 1;
            }
        }
    }
    (matched != negated, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redis_examples() {
        // The examples of Redis's KEYS documentation.
        for name in ["hello", "hallo", "hxllo"] {
            assert!(glob_matches(b"h?llo", name.as_bytes()), "{name}");
        }
        for name in ["hllo", "heeeello"] {
            assert!(glob_matches(b"h*llo", name.as_bytes()), "{name}");
        }
        assert!(glob_matches(b"h[ae]llo", b"hello") && glob_matches(b"h[ae]llo", b"hallo"));
        assert!(!glob_matches(b"h[ae]llo", b"hillo"));
        assert!(glob_matches(b"h[^e]llo", b"hallo") && glob_matches(b"h[^e]llo", b"hbllo"));
        assert!(!glob_matches(b"h[^e]llo", b"hello"));
        assert!(glob_matches(b"h[a-b]llo", b"hallo") && glob_matches(b"h[a-b]llo", b"hbllo"));
        assert!(!glob_matches(b"h[a-b]llo", b"hcllo"));
    }

    #[test]
    fn escapes_ranges_and_open_classes() {
        assert!(glob_matches(br"a\*b", b"a*b"));
        assert!(!glob_matches(br"a\*b", b"axb"));
        assert!(glob_matches(b"[z-a]", b"m"), "a range written high to low");
        assert!(glob_matches(br"[\]]", b"]"));
        assert!(glob_matches(b"[a-]", b"]"), "`a-]` is a range up to `]`, as in Redis");
        assert!(!glob_matches(b"[]", b"a"), "an empty class matches nothing");
        assert!(glob_matches(b"[ab", b"b"), "an open class runs to the end");
        assert!(glob_matches(b"x\\", b"x\\"), "a last backslash is itself");
        assert!(glob_matches(b"", b""));
        assert!(!glob_matches(b"", b"a"));
        assert!(glob_matches(b"**", b""));
        assert!(glob_matches(b"user:*:cart", b"user:42:cart"));
        assert!(!glob_matches(b"user:*:cart", b"user:42:carts"));
    }

    #[test]
    fn many_stars_stay_polynomial() {
        let pattern = [b'a', b'*'].repeat(200);
        let name = vec![b'a'; 4_000];
        let mut almost = name.clone();
        almost.push(b'b');
        assert!(glob_matches(&pattern, &name));
        let mut must_end_in_c = pattern.clone();
        must_end_in_c.push(b'c');
        assert!(!glob_matches(&must_end_in_c, &almost));
    }

    /// The rules written as plainly as possible (recursive, exponential): the
    /// reference the fast matcher must agree with.
    fn reference(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.first() {
            None => name.is_empty(),
            Some(b'*') => (0..=name.len()).any(|taken| reference(&pattern[1..], &name[taken..])),
            Some(_) => {
                let Some((&byte, rest)) = name.split_first() else {
                    return false;
                };
                let (matched, next) = match_one(pattern, 0, byte);
                matched && reference(&pattern[next..], rest)
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_plain_rules(
            pattern in proptest::collection::vec(prop::sample::select(b"ab*?[]^-\\".to_vec()), 0..10),
            name in proptest::collection::vec(prop::sample::select(b"ab]-".to_vec()), 0..10),
        ) {
            prop_assert_eq!(glob_matches(&pattern, &name), reference(&pattern, &name));
        }

        #[test]
        fn a_name_without_specials_matches_itself(name in proptest::collection::vec(b'a'..=b'z', 0..32)) {
            prop_assert!(glob_matches(&name, &name));
            prop_assert!(glob_matches(b"*", &name));
        }
    }
}

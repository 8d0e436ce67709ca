//! Go RE2 regexes applied to byte strings as nix2container's Go code applies
//! them (`rewrite` and `perms` patterns): Go's ASCII-only Perl classes,
//! its literal `[`, `&&` and `~~` inside classes, `\Q…\E`, invalid UTF-8
//! seen as U+FFFD, and `ReplaceAll`'s `$name` expansion.

use regex::bytes::{Regex, RegexBuilder};

use super::N2cError;

/// Compiles a Go RE2 pattern so that it matches as Go's `regexp` does on
/// byte strings: `\d \w \s \b` (and their negations) are ASCII-only in RE2
/// but Unicode in Rust, so they are spelled out as ASCII classes; Rust's
/// class set operators (`&&`, `--`, `~~`) and nested `[` are literal in
/// Go and escaped; `\Q…\E` becomes an escaped literal.
fn compile_go_regex(pattern: &str) -> Result<Regex, N2cError> {
    RegexBuilder::new(&translate_go_regex(pattern))
        .build()
        .map_err(|source| N2cError::Regex {
            regex: pattern.to_owned(),
            source,
        })
}

fn translate_go_regex(p: &str) -> String {
    const WORD: &str = "0-9A-Za-z_";
    const SPACE: &str = "\\t\\n\\x0C\\r ";
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 16);
    let mut in_class = false;
    // Just after `[` or `[^`, where `]` is a literal.
    let mut class_start = false;
    let mut prev_dash = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let starting = class_start;
        class_start = false;
        let was_dash = prev_dash;
        prev_dash = false;
        match c {
            '\\' => {
                let Some(&e) = chars.get(i) else {
                    // A trailing backslash: let the regex parser reject it.
                    out.push('\\');
                    continue;
                };
                i += 1;
                match (e, in_class) {
                    ('d', false) => out.push_str("[0-9]"),
                    ('d', true) => out.push_str("0-9"),
                    ('w', false) => out.push_str(&format!("[{WORD}]")),
                    ('w', true) => out.push_str(WORD),
                    ('s', false) => out.push_str(&format!("[{SPACE}]")),
                    ('s', true) => out.push_str(SPACE),
                    ('D', _) => out.push_str("[^0-9]"),
                    ('W', _) => out.push_str(&format!("[^{WORD}]")),
                    ('S', _) => out.push_str(&format!("[^{SPACE}]")),
                    ('b', false) => out.push_str("(?-u:\\b)"),
                    ('B', false) => out.push_str("(?-u:\\B)"),
                    ('Q', false) => {
                        let rest: String = chars[i..].iter().collect();
                        let (lit, after) = match rest.find("\\E") {
                            Some(end) => (&rest[..end], end + 2),
                            None => (&rest[..], rest.len()),
                        };
                        out.push_str(&regex::escape(lit));
                        i += rest[..after].chars().count();
                    }
                    (e, _) => {
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            '[' => {
                // `[:alpha:]` is a class in both dialects; any other `[`
                // inside a class is a literal in Go, a nested class in Rust.
                let rest: String = chars[i..].iter().collect();
                match rest.strip_prefix(':').and_then(|r| r.find(":]")) {
                    Some(end) => {
                        out.push('[');
                        out.push_str(&rest[..end + 3]);
                        i += rest[..end + 3].chars().count();
                    }
                    None => out.push_str("\\["),
                }
            }
            ']' if in_class && !starting => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && was_dash => out.push_str("\\-"),
            '-' if in_class => {
                prev_dash = true;
                out.push('-');
            }
            c => out.push(c),
        }
    }
    out
}

/// A Go RE2 regex applied to byte strings as Go applies it.
///
/// Go decodes the subject rune by rune and sees every byte that is not part
/// of valid UTF-8 as U+FFFD (so `.` and `[^/]` match it); Rust's byte
/// regexes would not match such a byte at all in Unicode mode. So the
/// subject is matched in a copy where each invalid byte is U+FFFD, and
/// match positions are mapped back to the original bytes, which are what
/// the output copies.
#[derive(Clone, Debug)]
pub struct GoRegex {
    re: Regex,
}

/// A subject as Go's matcher sees it.
struct Haystack<'a> {
    text: std::borrow::Cow<'a, [u8]>,
    /// For each byte offset of `text` (and its end), the offset in the
    /// original; `None` when the subject was valid UTF-8.
    orig: Option<Vec<usize>>,
}

impl<'a> Haystack<'a> {
    fn new(src: &'a [u8]) -> Haystack<'a> {
        if std::str::from_utf8(src).is_ok() {
            return Haystack {
                text: src.into(),
                orig: None,
            };
        }
        let mut text = Vec::with_capacity(src.len() + 8);
        let mut orig = Vec::with_capacity(src.len() + 8);
        let mut at = 0;
        for chunk in src.utf8_chunks() {
            for _ in 0..chunk.valid().len() {
                orig.push(at);
                at += 1;
            }
            text.extend_from_slice(chunk.valid().as_bytes());
            // Go's decoder takes invalid bytes one at a time.
            for _ in chunk.invalid() {
                text.extend_from_slice("\u{FFFD}".as_bytes());
                orig.extend([at, at, at]);
                at += 1;
            }
        }
        orig.push(at);
        Haystack {
            text: text.into(),
            orig: Some(orig),
        }
    }

    fn orig(&self, t: usize) -> usize {
        self.orig.as_ref().map_or(t, |o| o[t])
    }

    fn is_boundary(&self, t: usize) -> bool {
        self.text.get(t).is_none_or(|b| !(0x80..=0xBF).contains(b))
    }
}

impl GoRegex {
    /// Compiles a Go RE2 pattern: `\d \w \s \b` ASCII-only as in RE2.
    pub fn new(pattern: &str) -> Result<GoRegex, N2cError> {
        Ok(GoRegex {
            re: compile_go_regex(pattern)?,
        })
    }

    /// The leftmost match starting at a rune boundary at or after `search`
    /// (Go never starts a match inside a rune; Rust's byte-level empty
    /// assertions could).
    fn find_at(
        &self,
        hay: &Haystack<'_>,
        locs: &mut regex::bytes::CaptureLocations,
        mut search: usize,
    ) -> Option<(usize, usize)> {
        loop {
            let m = self.re.captures_read_at(locs, &hay.text, search)?;
            if hay.is_boundary(m.start()) {
                return Some((m.start(), m.end()));
            }
            search = m.start() + 1;
            while !hay.is_boundary(search) {
                search += 1;
            }
        }
    }

    /// Go's `Regexp.Match`.
    pub fn is_match(&self, src: &[u8]) -> bool {
        let hay = Haystack::new(src);
        self.find_at(&hay, &mut self.re.capture_locations(), 0)
            .is_some()
    }

    /// Go's `Regexp.ReplaceAll(src, repl)`: every match replaced, `$name`
    /// and `${name}` expanded, no replacement for an empty match right
    /// after a previous match.
    pub fn replace_all(&self, src: &[u8], repl: &str) -> Vec<u8> {
        let hay = Haystack::new(src);
        let text = &hay.text;
        let mut out = Vec::with_capacity(src.len());
        let mut last_end = 0;
        let mut search = 0;
        let mut locs = self.re.capture_locations();
        while search <= text.len() {
            let Some((start, end)) = self.find_at(&hay, &mut locs, search) else {
                break;
            };
            out.extend_from_slice(&src[hay.orig(last_end)..hay.orig(start)]);
            if end > last_end || start == 0 {
                go_expand(&self.re, &locs, &hay, src, repl, &mut out);
            }
            last_end = end;
            let width = utf8_width(&text[search..]);
            if search + width > end {
                search += width;
            } else if search + 1 > end {
                search += 1;
            } else {
                search = end;
            }
        }
        out.extend_from_slice(&src[hay.orig(last_end)..]);
        out
    }
}

/// The text a pattern of the form `^literal` stands for, when that is all
/// it is: `^`, then characters that are not metacharacters, escaped
/// punctuation (`\.`, `\/`), or an unescaped `.` (nix2container writes
/// `copyToRoot` rewrites as `^` and the store path unescaped, and store
/// names have dots). On a subject that begins with the text, such a
/// pattern matches exactly that prefix, once (no `m` flag can be set
/// without `(`): a rewrite with it moves a whole tree. (An unescaped `.`
/// matches other subjects too; callers only rely on subjects that begin
/// with the text.)
pub fn anchored_literal(pattern: &str) -> Option<String> {
    let body = pattern.strip_prefix('^')?;
    let mut literal = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => literal.push(e),
                _ => return None,
            },
            '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => return None,
            c => literal.push(c),
        }
    }
    Some(literal)
}

/// Bytes of the first rune as Go's `utf8.DecodeRune` counts them: 0 at the
/// end, 1 for an invalid byte.
fn utf8_width(b: &[u8]) -> usize {
    let Some(&lead) = b.first() else { return 0 };
    let len = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    };
    if len > 1 && b.len() >= len && std::str::from_utf8(&b[..len]).is_ok() {
        len
    } else {
        1
    }
}

/// Go's `Regexp.expand` (the template is valid UTF-8: it comes from JSON).
fn go_expand(
    re: &Regex,
    locs: &regex::bytes::CaptureLocations,
    hay: &Haystack<'_>,
    src: &[u8],
    template: &str,
    out: &mut Vec<u8>,
) {
    let group = |i: usize, out: &mut Vec<u8>| {
        if let Some((s, e)) = locs.get(i) {
            out.extend_from_slice(&src[hay.orig(s)..hay.orig(e)]);
        }
    };
    let mut t = template;
    while let Some(pos) = t.find('$') {
        out.extend_from_slice(&t.as_bytes()[..pos]);
        t = &t[pos + 1..];
        if let Some(rest) = t.strip_prefix('$') {
            out.push(b'$');
            t = rest;
            continue;
        }
        let Some((name, rest)) = extract_name(t) else {
            out.push(b'$');
            continue;
        };
        t = rest;
        match go_group_number(name) {
            Some(n) => group(n, out),
            None => {
                if let Some(i) = re.capture_names().position(|n| n == Some(name)) {
                    group(i, out);
                }
            }
        }
    }
    out.extend_from_slice(t.as_bytes());
}

/// Go's `extract`: the longest run of letters, digits and `_`, optionally
/// in braces. Returns the name and what follows it.
fn extract_name(t: &str) -> Option<(&str, &str)> {
    let (brace, body) = match t.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, t),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !(c.is_alphabetic() || c.is_numeric() || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    if brace {
        let rest = body[end..].strip_prefix('}')?;
        Some((name, rest))
    } else {
        Some((name, &body[end..]))
    }
}

/// A purely numeric name without a leading zero (and below 10⁸) is a
/// group index, as in Go.
fn go_group_number(name: &str) -> Option<usize> {
    if !name.bytes().all(|b| b.is_ascii_digit()) || (name.len() > 1 && name.starts_with('0')) {
        return None;
    }
    let mut n: usize = 0;
    for b in name.bytes() {
        if n >= 100_000_000 {
            return None;
        }
        n = n * 10 + usize::from(b - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn replace(re: &str, src: &str, repl: &str) -> String {
        let re = GoRegex::new(re).unwrap();
        String::from_utf8(re.replace_all(src.as_bytes(), repl)).unwrap()
    }

    #[test]
    fn go_generated_regex_vectors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nix2container");
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&fs::read(dir.join(name)).unwrap()).unwrap()
        };
        let (cases, expected) = (read("regex-cases.json"), read("regex-cases.expected.json"));
        let (cases, expected) = (cases.as_array().unwrap(), expected.as_array().unwrap());
        assert_eq!(cases.len(), expected.len());
        let mut failed = Vec::new();
        for (case, want) in cases.iter().zip(expected) {
            let pattern = case["regex"].as_str().unwrap();
            let src = hex::decode(case["input_hex"].as_str().unwrap()).unwrap();
            let re = GoRegex::new(pattern).unwrap();
            let got = (
                re.is_match(&src),
                hex::encode(re.replace_all(&src, case["repl"].as_str().unwrap())),
            );
            let want = (
                want["match"].as_bool().unwrap(),
                want["replaced_hex"].as_str().unwrap().to_owned(),
            );
            if got != want {
                failed.push(format!("`{pattern}`: got {got:?}, want {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn anchored_literals_are_recognised_and_match_as_go_does() {
        for (pattern, literal) in [
            (r"^/tmp/store", Some("/tmp/store")),
            (
                r"^/work/bench/\.cache/n2c/store",
                Some("/work/bench/.cache/n2c/store"),
            ),
            (r"^\/a\-b", Some("/a-b")),
            ("^", Some("")),
            ("^/é", Some("/é")),
            ("/tmp/store", None),
            (r"^/nix/store/[^/]*-root", None),
            (
                "^/nix/store/abc-python3.11-env",
                Some("/nix/store/abc-python3.11-env"),
            ),
            (r"^/a.*", None),
            (r"^/a\d", None),
            (r"^\Q/a\E", None),
            ("^/a$", None),
            ("^/a|/b", None),
            ("^(?m)/a", None),
            ("^/a{2}", None),
        ] {
            assert_eq!(anchored_literal(pattern).as_deref(), literal, "{pattern}");
            // What the fast path assumes: the match is the literal, at the
            // start, once.
            if let Some(literal) = literal {
                let re = GoRegex::new(pattern).unwrap();
                let subject = format!("{literal}/x{literal}");
                assert_eq!(
                    re.replace_all(subject.as_bytes(), "R"),
                    format!("R/x{literal}").into_bytes(),
                    "{pattern}"
                );
            }
        }
    }

    #[test]
    fn perl_classes_are_ascii_like_re2() {
        let d = compile_go_regex(r"^\d+$").unwrap();
        assert!(d.is_match(b"0123"));
        assert!(
            !d.is_match("٣".as_bytes()),
            "Arabic-Indic digit is not \\d in RE2"
        );
        let w = compile_go_regex(r"^[\w.]+$").unwrap();
        assert!(w.is_match(b"a_b.c"));
        assert!(!w.is_match("é".as_bytes()));
        let s = compile_go_regex(r"^\s$").unwrap();
        assert!(
            s.is_match(b" ") && !s.is_match(b"\x0B"),
            "RE2 \\s has no \\v"
        );
        let b = compile_go_regex(r"\bx").unwrap();
        assert!(b.is_match("éx".as_bytes()), "é is not a word char in RE2");
        let nd = compile_go_regex(r"^[^\D]$").unwrap();
        assert!(nd.is_match(b"7") && !nd.is_match(b"a"));
        // Literal in Go, set operators in Rust.
        let ops = compile_go_regex(r"^[a&&b~~[]+$").unwrap();
        assert!(ops.is_match(b"&~[ab"));
        let q = compile_go_regex(r"^\Q/a.b\E$").unwrap();
        assert!(q.is_match(b"/a.b") && !q.is_match(b"/axb"));
    }

    #[test]
    fn replace_all_follows_go() {
        assert_eq!(
            replace("^/nix/store/[^/]*-root", "/nix/store/x-root/etc", ""),
            "/etc"
        );
        assert_eq!(replace("a*", "baaac", "x"), "xbxcx");
        assert_eq!(
            replace("(?P<first>\\w+) (\\w+)", "hello world", "$2 ${first}"),
            "world hello"
        );
        // Longest name: `$1x` is group `1x`, which does not exist.
        assert_eq!(replace("(a)", "a", "$1x|${1}x|$$|$"), "|ax|$|$");
        assert_eq!(replace("o", "foo", "0"), "f00");
    }
}

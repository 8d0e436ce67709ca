//! From store paths to the ordered entries of a nix2container layer
//! (formats.md §2.1 "Tree" and "Order"): walk with lstat, strip Darwin
//! case-hack suffixes, rewrite names with Go RE2 semantics, apply `perms`,
//! merge everything into one tree keyed by name bytes, and emit it
//! depth-first with children sorted byte-wise into a [`GoTarWriter`].
//!
//! Only metadata is held (one node per entry, as nix2container does); file
//! contents stream from disk to the writer. Names stay byte strings from
//! `lstat` to the tar header; nothing is decoded as UTF-8.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use regex::bytes::{Regex, RegexBuilder};

use super::image::{Perm, StorePath};
use super::tar::{
    go_path_clean, go_path_join, GoTarWriter, Header, TYPE_BLOCK, TYPE_CHAR, TYPE_DIR, TYPE_FIFO,
    TYPE_REG, TYPE_SYMLINK,
};
use super::N2cError;

/// How a layer is synthesised beyond what image.json says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeOptions {
    /// Remove `~nix~case~hack~N` suffixes from every source component
    /// before rewrite and perms see the path. A Darwin Nix store adds them
    /// (and nix2container built there strips them); on Linux they never
    /// occur, so the default is "on macOS only".
    pub strip_case_hack: bool,
}

// Derivable only where `cfg!` is false (not on macOS).
#[allow(clippy::derivable_impls)]
impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            strip_case_hack: cfg!(target_os = "macos"),
        }
    }
}

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

const CASE_HACK: &[u8] = b"~nix~case~hack~";

/// Removes a `~nix~case~hack~N` suffix (N ≥ 1, one occurrence only) from
/// every component, as nix2container's `unhackNixCaseHack` does.
pub fn strip_case_hack(path: &[u8]) -> Vec<u8> {
    let parts: Vec<Vec<u8>> = path.split(|&b| b == b'/').map(unhack_component).collect();
    parts.join(&b'/')
}

fn unhack_component(name: &[u8]) -> Vec<u8> {
    let found: Vec<usize> = name
        .windows(CASE_HACK.len())
        .enumerate()
        .filter(|(_, w)| *w == CASE_HACK)
        .map(|(i, _)| i)
        .collect();
    // Go splits on the marker; overlapping occurrences cannot happen with
    // this marker, so one occurrence means exactly two parts.
    if let [at] = found[..] {
        let index = &name[at + CASE_HACK.len()..];
        if go_parse_int(index).is_some_and(|n| n >= 1) {
            return name[..at].to_vec();
        }
    }
    name.to_vec()
}

/// Go's `strconv.ParseInt(s, 10, 64)`.
fn go_parse_int(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse::<i64>().ok()
}

/// Go's `fmt.Sscanf(s, "%o", &mode)`: leading spaces, a sign, octal
/// digits, anything after ignored.
fn go_scan_octal(s: &str) -> Option<i64> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r']);
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = body
        .bytes()
        .position(|b| !(b'0'..=b'7').contains(&b))
        .unwrap_or(body.len());
    let v = i64::from_str_radix(&body[..end], 8).ok()?;
    Some(if neg { -v } else { v })
}

/// `strconv.ParseUint(s, 8, 12)`.
fn go_parse_or_mode(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    i64::from_str_radix(s, 8).ok().filter(|&v| v <= 0o7777)
}

/// A store path's options, compiled once.
struct Compiled<'a> {
    rewrite: Option<(GoRegex, &'a str)>,
    perms: Vec<(GoRegex, &'a Perm)>,
    /// For collisions: Go compares `options.Perms` when options exist.
    raw_perms: Option<&'a [Perm]>,
}

fn compile(sp: &StorePath) -> Result<Compiled<'_>, N2cError> {
    let Some(opts) = &sp.options else {
        return Ok(Compiled {
            rewrite: None,
            perms: Vec::new(),
            raw_perms: None,
        });
    };
    let rewrite = if opts.rewrite.regex.is_empty() {
        None
    } else {
        Some((
            GoRegex::new(&opts.rewrite.regex)?,
            opts.rewrite.repl.as_str(),
        ))
    };
    let perms = opts
        .perms
        .iter()
        .map(|p| Ok((GoRegex::new(&p.regex)?, p)))
        .collect::<Result<_, N2cError>>()?;
    Ok(Compiled {
        rewrite,
        perms,
        raw_perms: Some(&opts.perms),
    })
}

struct Entry {
    /// The path on disk.
    source: PathBuf,
    /// The source path as rewrite and perms see it (case hacks removed).
    seen: Vec<u8>,
    meta: Metadata,
    /// Index into the compiled options.
    options: usize,
}

#[derive(Default)]
struct Node {
    /// `None` for synthetic directories (ancestors never walked).
    entry: Option<Entry>,
    children: BTreeMap<Vec<u8>, Node>,
}

/// nix2container's `splitPath`: components of the cleaned path, `""` first
/// for an absolute one, and just `[""]` for `/`.
fn split_path(dst: &[u8]) -> Vec<Vec<u8>> {
    let cleaned = go_path_clean(dst);
    if cleaned == b"/" {
        return vec![Vec::new()];
    }
    cleaned.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
}

struct Builder<'a> {
    compiled: Vec<Compiled<'a>>,
    options: TreeOptions,
    root: Node,
}

impl Builder<'_> {
    /// `filepath.Walk`: lstat, the entry, then (for a directory) its
    /// entries in byte order, joined with `filepath.Join`.
    fn walk(&mut self, root: &[u8], which: usize) -> Result<(), N2cError> {
        // An explicit stack instead of recursion: store trees can be deeper
        // than a worker thread's stack is comfortable with. Children are
        // pushed in reverse so they pop in byte order (pre-order, as Go).
        let mut pending = vec![root.to_vec()];
        while let Some(path) = pending.pop() {
            let p = Path::new(OsStr::from_bytes(&path));
            let io_err = |source| N2cError::Io {
                path: p.to_owned(),
                source,
            };
            let meta = fs::symlink_metadata(p).map_err(io_err)?;
            let is_dir = meta.is_dir();
            self.add(&path, meta, which)?;
            if is_dir {
                let mut names = Vec::new();
                for entry in fs::read_dir(p).map_err(io_err)? {
                    names.push(entry.map_err(io_err)?.file_name().as_bytes().to_vec());
                }
                names.sort();
                pending.extend(names.iter().rev().map(|n| go_path_join(&[&path, n])));
            }
        }
        Ok(())
    }

    /// nix2container's `addFileToGraph`.
    fn add(&mut self, path: &[u8], meta: Metadata, which: usize) -> Result<(), N2cError> {
        let seen = if self.options.strip_case_hack {
            strip_case_hack(path)
        } else {
            path.to_vec()
        };
        let compiled = &self.compiled[which];
        let dst = match &compiled.rewrite {
            Some((re, repl)) => re.replace_all(&seen, repl),
            None => seen.clone(),
        };
        if dst.is_empty() {
            return Ok(());
        }
        let mut node = &mut self.root;
        for part in split_path(&dst) {
            node = node.children.entry(part).or_default();
        }
        let source = PathBuf::from(OsStr::from_bytes(path));
        if let Some(old) = &node.entry {
            let collision = |what: &'static str| N2cError::Collision {
                destination: PathBuf::from(OsStr::from_bytes(&dst)),
                first: old.source.clone(),
                second: source.clone(),
                what,
            };
            if old.meta.mode() != meta.mode() {
                return Err(collision("modes"));
            }
            if old.meta.is_file() && old.meta.len() != meta.len() {
                return Err(collision("sizes"));
            }
            if let Some(old_perms) = self.compiled[old.options].raw_perms {
                if old_perms != compiled.raw_perms.unwrap_or(&[]) {
                    return Err(collision("perms"));
                }
            }
        }
        node.entry = Some(Entry {
            source,
            seen,
            meta,
            options: which,
        });
        Ok(())
    }
}

/// Writes the layer tar of `paths` into `out`, byte-identical to
/// nix2container's `TarPaths`.
pub fn write_tree<W: Write>(
    paths: &[StorePath],
    options: TreeOptions,
    out: W,
) -> Result<W, N2cError> {
    let mut builder = Builder {
        compiled: paths.iter().map(compile).collect::<Result<_, _>>()?,
        options,
        root: Node::default(),
    };
    for (i, sp) in paths.iter().enumerate() {
        builder.walk(sp.path.as_os_str().as_bytes(), i)?;
    }
    let mut tw = GoTarWriter::new(out);
    let mut buf = vec![0u8; 64 * 1024];
    emit(&builder.root, &builder.compiled, &mut tw, &mut buf)?;
    tw.finish().map_err(|source| N2cError::Tar {
        name: "end of archive".into(),
        source,
    })
}

fn emit<W: Write>(
    root: &Node,
    compiled: &[Compiled<'_>],
    tw: &mut GoTarWriter<W>,
    buf: &mut [u8],
) -> Result<(), N2cError> {
    // Depth-first pre-order with an explicit stack (see `walk`).
    let mut pending: Vec<(Vec<u8>, &Node)> = child_list(root, b"");
    while let Some((dst, node)) = pending.pop() {
        let hdr = match &node.entry {
            None => Header {
                name: dst.clone(),
                typeflag: TYPE_DIR,
                mode: 0o755,
                mtime: 1,
                uname: b"root".to_vec(),
                gname: b"root".to_vec(),
                ..Header::default()
            },
            Some(entry) => entry_header(entry, &compiled[entry.options], dst.clone())?,
        };
        let tar_err = |source| N2cError::Tar {
            name: String::from_utf8_lossy(&dst).into_owned(),
            source,
        };
        tw.write_header(&hdr).map_err(tar_err)?;
        if let Some(entry) = &node.entry {
            if hdr.typeflag == TYPE_REG {
                copy_file(entry, tw, buf)?;
            }
        }
        pending.extend(child_list(node, &dst));
    }
    Ok(())
}

/// A node's children with their destination names, last first (so that
/// popping gives byte order).
fn child_list<'n>(node: &'n Node, base: &[u8]) -> Vec<(Vec<u8>, &'n Node)> {
    node.children
        .iter()
        .rev()
        .map(|(name, child)| {
            let dst = if name.is_empty() {
                b"/".to_vec()
            } else {
                go_path_join(&[base, name])
            };
            (dst, child)
        })
        .collect()
}

/// Go's `tar.FileInfoHeader` plus nix2container's overrides.
fn entry_header(entry: &Entry, compiled: &Compiled<'_>, name: Vec<u8>) -> Result<Header, N2cError> {
    let meta = &entry.meta;
    let ft = meta.file_type();
    let mut hdr = Header {
        name,
        mode: i64::from(meta.mode() & 0o7777),
        mtime: 1,
        uname: b"root".to_vec(),
        gname: b"root".to_vec(),
        ..Header::default()
    };
    if ft.is_file() {
        hdr.typeflag = TYPE_REG;
        hdr.size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
    } else if ft.is_dir() {
        hdr.typeflag = TYPE_DIR;
    } else if ft.is_symlink() {
        hdr.typeflag = TYPE_SYMLINK;
        let target = fs::read_link(&entry.source).map_err(|source| N2cError::Io {
            path: entry.source.clone(),
            source,
        })?;
        hdr.linkname = target.into_os_string().into_vec();
        // nix2container forces Linux symlink permissions (issue #23).
        hdr.mode = 0o777;
    } else if ft.is_fifo() {
        hdr.typeflag = TYPE_FIFO;
    } else if ft.is_char_device() || ft.is_block_device() {
        hdr.typeflag = if ft.is_char_device() {
            TYPE_CHAR
        } else {
            TYPE_BLOCK
        };
        let rdev = meta.rdev();
        // Go's archive/tar (stat_unix.go) splits Linux device numbers so.
        hdr.devmajor = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as i64;
        hdr.devminor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as i64;
    } else {
        return Err(N2cError::Socket {
            path: entry.source.clone(),
        });
    }
    for (re, perm) in &compiled.perms {
        if !re.is_match(&entry.seen) {
            continue;
        }
        hdr.uid = perm.uid;
        hdr.gid = perm.gid;
        if !perm.uname.is_empty() {
            hdr.uname = perm.uname.as_bytes().to_vec();
        }
        if !perm.gname.is_empty() {
            hdr.gname = perm.gname.as_bytes().to_vec();
        }
        let bad_mode = |mode: &str| N2cError::Mode {
            mode: mode.to_owned(),
            path: entry.source.clone(),
        };
        if !perm.mode.is_empty() {
            hdr.mode = go_scan_octal(&perm.mode).ok_or_else(|| bad_mode(&perm.mode))?;
        }
        if !perm.or_mode.is_empty() {
            hdr.mode |= go_parse_or_mode(&perm.or_mode).ok_or_else(|| bad_mode(&perm.or_mode))?;
        }
    }
    Ok(hdr)
}

/// Streams a regular file's bytes; a file that is not exactly its lstat
/// size any more fails, as Go's writer does.
fn copy_file<W: Write>(
    entry: &Entry,
    tw: &mut GoTarWriter<W>,
    buf: &mut [u8],
) -> Result<(), N2cError> {
    let io_err = |source| N2cError::Io {
        path: entry.source.clone(),
        source,
    };
    let changed = || N2cError::FileChanged {
        path: entry.source.clone(),
        expected: entry.meta.len(),
    };
    let mut file = File::open(&entry.source).map_err(io_err)?;
    loop {
        let n = match file.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            break;
        }
        if n as i64 > tw.remaining() {
            return Err(changed());
        }
        tw.write_data(&buf[..n]).map_err(|source| N2cError::Tar {
            name: entry.source.display().to_string(),
            source,
        })?;
    }
    if tw.remaining() != 0 {
        return Err(changed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn case_hack_suffixes_are_stripped_per_component() {
        assert_eq!(
            strip_case_hack(b"/nix/store/a/Foo~nix~case~hack~1/bar~nix~case~hack~2"),
            b"/nix/store/a/Foo/bar"
        );
        for kept in [
            &b"a~nix~case~hack~0"[..],
            b"a~nix~case~hack~x",
            b"a~nix~case~hack~1~nix~case~hack~2",
        ] {
            assert_eq!(strip_case_hack(kept), kept);
        }
    }

    #[test]
    fn mode_strings_parse_as_go_sscanf() {
        assert_eq!(go_scan_octal("4755"), Some(0o4755));
        assert_eq!(go_scan_octal("03x1"), Some(3));
        assert_eq!(go_scan_octal("x"), None);
        assert_eq!(go_parse_or_mode("0200"), Some(0o200));
        assert_eq!(go_parse_or_mode("10000"), None);
    }

    #[test]
    fn split_path_gives_empty_root_component() {
        assert_eq!(split_path(b"/"), vec![Vec::<u8>::new()]);
        assert_eq!(
            split_path(b"/a//b/"),
            vec![b"".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            split_path(b"../data"),
            vec![b"..".to_vec(), b"data".to_vec()]
        );
    }
}

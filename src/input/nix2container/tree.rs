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
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
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

/// What a tar header needs of an entry's `lstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    /// `st_mode`: file type and permission bits.
    mode: u32,
    size: u64,
    rdev: u64,
}

impl Stat {
    fn of(meta: &Metadata) -> Stat {
        Stat {
            mode: meta.mode(),
            size: meta.len(),
            rdev: meta.rdev(),
        }
    }

    fn is(&self, kind: u32) -> bool {
        self.mode & S_IFMT == kind
    }
}

// File type bits of `st_mode`: the same on every Unix (Go's archive/tar
// spells them out too), and `u32` whatever width the platform's mode_t is.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// A walked entry. Its path on disk is not stored whole: it is the walked
/// directory `dir` (an index into [`Builder::dirs`]) joined with `name`, as
/// the walk built it ([`Dirs::path`]); for a store path's root, `name` is
/// empty and `dir` is the root itself.
struct Entry {
    dir: usize,
    name: Box<[u8]>,
    /// The path as rewrite and perms see it, when case hacks were removed
    /// from it; `None` when that is the path on disk.
    unhacked: Option<Box<[u8]>>,
    stat: Stat,
    /// Index into the compiled options.
    options: usize,
}

/// The exact path of every directory walked, so that entries need keep
/// only their own name.
#[derive(Default)]
struct Dirs(Vec<Box<[u8]>>);

impl Dirs {
    fn push(&mut self, path: &[u8]) -> usize {
        self.0.push(path.into());
        self.0.len() - 1
    }

    /// `filepath.Join(dir, name)`, as the walk joined it; the directory
    /// itself for an empty name.
    fn path(&self, dir: usize, name: &[u8]) -> Vec<u8> {
        let dir = self.0.get(dir).map_or(&[][..], |d| &d[..]);
        if name.is_empty() {
            dir.to_vec()
        } else {
            go_path_join(&[dir, name])
        }
    }
}

/// An entry with its directory table: everything that reads or reports the
/// file on disk.
struct Located<'a> {
    entry: &'a Entry,
    source: PathBuf,
}

impl<'a> Located<'a> {
    fn new(entry: &'a Entry, dirs: &Dirs) -> Located<'a> {
        let source = PathBuf::from(OsString::from_vec(dirs.path(entry.dir, &entry.name)));
        Located { entry, source }
    }

    /// The path as rewrite and perms see it.
    fn seen(&self) -> &[u8] {
        self.entry
            .unhacked
            .as_deref()
            .unwrap_or_else(|| self.source.as_os_str().as_bytes())
    }
}

/// One name in the merged tree. Small on purpose: a B-tree node stores up
/// to eleven of them inline, and a layer can have hundreds of thousands of
/// files, so the entry is boxed (and holds no whole path nor `Metadata`)
/// and synthetic directories cost only their map.
#[derive(Default)]
struct Node {
    /// `None` for synthetic directories (ancestors never walked).
    entry: Option<Box<Entry>>,
    children: BTreeMap<Box<[u8]>, Node>,
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
    dirs: Dirs,
    root: Node,
}

impl Builder<'_> {
    /// `filepath.Walk`: lstat, the entry, then (for a directory) its
    /// entries in byte order, joined with `filepath.Join`.
    fn walk(&mut self, root: &[u8], which: usize) -> Result<(), N2cError> {
        // An explicit stack instead of recursion: store trees can be deeper
        // than a worker thread's stack is comfortable with. Children are
        // pushed in reverse so they pop in byte order (pre-order, as Go).
        // Each is (directory, name); the root is its own "directory".
        let mut pending: Vec<(usize, Box<[u8]>)> = vec![(self.dirs.push(root), Box::default())];
        while let Some((dir, name)) = pending.pop() {
            let path = self.dirs.path(dir, &name);
            let p = Path::new(OsStr::from_bytes(&path));
            let io_err = |source| N2cError::Io {
                path: p.to_owned(),
                source,
            };
            let meta = fs::symlink_metadata(p).map_err(io_err)?;
            let is_dir = meta.is_dir();
            let is_root = name.is_empty();
            self.add(&path, dir, name, Stat::of(&meta), which)?;
            if is_dir {
                let this = if is_root { dir } else { self.dirs.push(&path) };
                let mut names = Vec::new();
                for entry in fs::read_dir(p).map_err(io_err)? {
                    names.push(entry.map_err(io_err)?.file_name().into_vec());
                }
                names.sort();
                pending.extend(
                    names
                        .into_iter()
                        .rev()
                        .map(|n| (this, n.into_boxed_slice())),
                );
            }
        }
        Ok(())
    }

    /// nix2container's `addFileToGraph`, for the entry found at `path`
    /// (`dir` joined with `name`).
    fn add(
        &mut self,
        path: &[u8],
        dir: usize,
        name: Box<[u8]>,
        stat: Stat,
        which: usize,
    ) -> Result<(), N2cError> {
        let unhacked = Some(path)
            .filter(|_| self.options.strip_case_hack)
            .map(strip_case_hack)
            .filter(|u| u.as_slice() != path);
        let seen = unhacked.as_deref().unwrap_or(path);
        let compiled = &self.compiled[which];
        let dst = match &compiled.rewrite {
            Some((re, repl)) => re.replace_all(seen, repl),
            None => seen.to_vec(),
        };
        if dst.is_empty() {
            return Ok(());
        }
        let mut node = &mut self.root;
        for part in split_path(&dst) {
            node = node.children.entry(part.into_boxed_slice()).or_default();
        }
        if let Some(old) = &node.entry {
            let collision = |what: &'static str| N2cError::Collision {
                destination: PathBuf::from(OsStr::from_bytes(&dst)),
                first: Located::new(old, &self.dirs).source,
                second: PathBuf::from(OsStr::from_bytes(path)),
                what,
            };
            if old.stat.mode != stat.mode {
                return Err(collision("modes"));
            }
            if old.stat.is(S_IFREG) && old.stat.size != stat.size {
                return Err(collision("sizes"));
            }
            if let Some(old_perms) = self.compiled[old.options].raw_perms {
                if old_perms != compiled.raw_perms.unwrap_or(&[]) {
                    return Err(collision("perms"));
                }
            }
        }
        node.entry = Some(Box::new(Entry {
            dir,
            name,
            unhacked: unhacked.map(Vec::into_boxed_slice),
            stat,
            options: which,
        }));
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
        dirs: Dirs::default(),
        root: Node::default(),
    };
    for (i, sp) in paths.iter().enumerate() {
        builder.walk(sp.path.as_os_str().as_bytes(), i)?;
    }
    let mut tw = GoTarWriter::new(out);
    let mut buf = vec![0u8; 64 * 1024];
    emit(&builder, &mut tw, &mut buf)?;
    tw.finish().map_err(|source| N2cError::Tar {
        name: "end of archive".into(),
        source,
    })
}

fn emit<W: Write>(
    builder: &Builder<'_>,
    tw: &mut GoTarWriter<W>,
    buf: &mut [u8],
) -> Result<(), N2cError> {
    // Depth-first pre-order with an explicit stack (see `walk`).
    let mut pending: Vec<(Vec<u8>, &Node)> = child_list(&builder.root, b"");
    while let Some((dst, node)) = pending.pop() {
        let located = node
            .entry
            .as_deref()
            .map(|entry| Located::new(entry, &builder.dirs));
        let hdr = match &located {
            None => Header {
                name: dst.clone(),
                typeflag: TYPE_DIR,
                mode: 0o755,
                mtime: 1,
                uname: b"root".to_vec(),
                gname: b"root".to_vec(),
                ..Header::default()
            },
            Some(entry) => {
                entry_header(entry, &builder.compiled[entry.entry.options], dst.clone())?
            }
        };
        let tar_err = |source| N2cError::Tar {
            name: String::from_utf8_lossy(&dst).into_owned(),
            source,
        };
        tw.write_header(&hdr).map_err(tar_err)?;
        if let Some(entry) = &located {
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
fn entry_header(
    entry: &Located<'_>,
    compiled: &Compiled<'_>,
    name: Vec<u8>,
) -> Result<Header, N2cError> {
    let stat = entry.entry.stat;
    let mut hdr = Header {
        name,
        mode: i64::from(stat.mode & 0o7777),
        mtime: 1,
        uname: b"root".to_vec(),
        gname: b"root".to_vec(),
        ..Header::default()
    };
    if stat.is(S_IFREG) {
        hdr.typeflag = TYPE_REG;
        hdr.size = i64::try_from(stat.size).unwrap_or(i64::MAX);
    } else if stat.is(S_IFDIR) {
        hdr.typeflag = TYPE_DIR;
    } else if stat.is(S_IFLNK) {
        hdr.typeflag = TYPE_SYMLINK;
        let target = fs::read_link(&entry.source).map_err(|source| N2cError::Io {
            path: entry.source.clone(),
            source,
        })?;
        hdr.linkname = target.into_os_string().into_vec();
        // nix2container forces Linux symlink permissions (issue #23).
        hdr.mode = 0o777;
    } else if stat.is(S_IFIFO) {
        hdr.typeflag = TYPE_FIFO;
    } else if stat.is(S_IFCHR) || stat.is(S_IFBLK) {
        hdr.typeflag = if stat.is(S_IFCHR) {
            TYPE_CHAR
        } else {
            TYPE_BLOCK
        };
        let rdev = stat.rdev;
        // Go's archive/tar (stat_unix.go) splits Linux device numbers so.
        hdr.devmajor = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as i64;
        hdr.devminor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as i64;
    } else {
        return Err(N2cError::Socket {
            path: entry.source.clone(),
        });
    }
    for (re, perm) in &compiled.perms {
        if !re.is_match(entry.seen()) {
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
    entry: &Located<'_>,
    tw: &mut GoTarWriter<W>,
    buf: &mut [u8],
) -> Result<(), N2cError> {
    let io_err = |source| N2cError::Io {
        path: entry.source.clone(),
        source,
    };
    let changed = || N2cError::FileChanged {
        path: entry.source.clone(),
        expected: entry.entry.stat.size,
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
    fn tree_nodes_stay_small() {
        // A layer of hundreds of thousands of files holds one Node and one
        // Entry per file until the tar is written: keep them lean (a std
        // Metadata alone is over 150 bytes).
        assert!(
            std::mem::size_of::<Node>() <= 32,
            "{}",
            std::mem::size_of::<Node>()
        );
        assert!(
            std::mem::size_of::<Entry>() <= 80,
            "{}",
            std::mem::size_of::<Entry>()
        );
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

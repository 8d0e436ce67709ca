//! From store paths to the ordered entries of a nix2container layer
//! (formats.md §2.1 "Tree" and "Order"): walk with lstat, strip Darwin
//! case-hack suffixes, rewrite names with Go RE2 semantics ([`super::go_regex`]), apply `perms`,
//! merge everything into one tree keyed by name bytes, and emit it
//! depth-first with children sorted byte-wise into a [`GoTarWriter`].
//!
//! File contents stream from disk to the writer. A layer whose store paths
//! each land whole somewhere (as they are, or moved by a `^literal` prefix
//! rewrite, as `copyToRoot` does) is written while it is walked, holding
//! only the directories being written; other layers hold one node per
//! entry until the end, as nix2container does. Names stay byte strings
//! from `lstat` to the tar header; nothing is decoded as UTF-8.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::go_regex::{anchored_literal, GoRegex};
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

/// What writing one entry needs to know of it: its `lstat`, where it is on
/// disk, and the path rewrite and perms saw.
struct Located<'a> {
    stat: Stat,
    source: PathBuf,
    /// The path as rewrite and perms see it, when case hacks were removed
    /// from it; `None` when that is `source`.
    unhacked: Option<&'a [u8]>,
}

impl<'a> Located<'a> {
    fn new(entry: &'a Entry, dirs: &Dirs) -> Located<'a> {
        let source = PathBuf::from(OsString::from_vec(dirs.path(entry.dir, &entry.name)));
        Located {
            stat: entry.stat,
            source,
            unhacked: entry.unhacked.as_deref(),
        }
    }

    /// The path as rewrite and perms see it.
    fn seen(&self) -> &[u8] {
        self.unhacked
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
                let names = read_names(p)?;
                pending.extend(names.into_iter().rev().map(|n| (this, n)));
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
            let old_options = &self.compiled[old.options];
            if let Some(what) = collision((&old.stat, old_options), (&stat, compiled)) {
                return Err(N2cError::Collision {
                    destination: PathBuf::from(OsStr::from_bytes(&dst)),
                    first: Located::new(old, &self.dirs).source,
                    second: PathBuf::from(OsStr::from_bytes(path)),
                    what,
                });
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
///
/// Almost every layer is a set of store paths each landing whole somewhere
/// (see `mounts`): those are written while they are walked, holding only
/// the directories being written. The others (a rewrite that is not a
/// `^literal` prefix, case hacks stripped) are merged into a tree first,
/// as nix2container does, which holds every entry's metadata until the end.
pub fn write_tree<W: Write>(
    paths: &[StorePath],
    options: TreeOptions,
    out: W,
) -> Result<W, N2cError> {
    match mounts(paths, options) {
        Some(mounts) => write_mounted(paths, &mounts, out),
        None => write_merged(paths, options, out),
    }
}

/// The general case: walk everything into the merged tree, then write it.
fn write_merged<W: Write>(
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
    // Depth-first pre-order with an explicit stack (see `walk`).
    let mut pending: Vec<(Vec<u8>, &Node)> = child_list(&builder.root, b"");
    while let Some((dst, node)) = pending.pop() {
        let entry = node.entry.as_deref();
        let located = entry.map(|entry| Located::new(entry, &builder.dirs));
        let compiled = entry.map(|entry| &builder.compiled[entry.options]);
        write_entry(&mut tw, &dst, located.as_ref().zip(compiled), &mut buf)?;
        pending.extend(child_list(node, &dst));
    }
    finish(tw)
}

/// A node's children with their destination names, last first (so that
/// popping gives byte order).
fn child_list<'n>(node: &'n Node, base: &[u8]) -> Vec<(Vec<u8>, &'n Node)> {
    node.children
        .iter()
        .rev()
        .map(|(name, child)| (child_dst(base, name), child))
        .collect()
}

/// The destination of `name` inside `base`, as the tree joins it: the
/// empty first component of an absolute path is `/`.
fn child_dst(base: &[u8], name: &[u8]) -> Vec<u8> {
    if name.is_empty() {
        b"/".to_vec()
    } else {
        go_path_join(&[base, name])
    }
}

/// A store path that lands whole at one destination: as it is, or moved by
/// a rewrite that replaces a `^literal` prefix (nix2container's
/// `copyToRoot` moves a path to `/` so; its tests move a temporary store).
/// Every path below the root then lands at the same place below the
/// destination, so the merged tree can be walked without building it.
struct Mount {
    /// Index into the store paths (their order decides collisions).
    which: usize,
    source: Vec<u8>,
    /// Components of the destination ([`split_path`]): `[""]` is `/`.
    dst: Vec<Vec<u8>>,
    /// Whether the root itself is an entry; not when the rewrite maps it to
    /// the empty path (then only what is inside it lands, in `/`).
    entry: bool,
}

/// The mounts of a layer, when every store path has one: a clean absolute
/// source, no rewrite or a `^literal` one that the source begins with and
/// whose replacement has no `$`, and a destination that is absolute. Not
/// with case hacks stripped (a name's destination would depend on each
/// component). `None`: the layer needs the merged tree.
fn mounts(paths: &[StorePath], options: TreeOptions) -> Option<Vec<Mount>> {
    if options.strip_case_hack || paths.is_empty() {
        return None;
    }
    let mut mounts = Vec::with_capacity(paths.len());
    for (which, sp) in paths.iter().enumerate() {
        let source = sp.path.as_os_str().as_bytes();
        // The walk joins (so cleans) the paths below the root: the root's
        // prefix is theirs only when the root is clean.
        if source.first() != Some(&b'/') || go_path_clean(source) != source {
            return None;
        }
        let rewrite = sp.options.as_ref().map(|o| &o.rewrite);
        let dst = match rewrite.filter(|r| !r.regex.is_empty()) {
            None => source.to_vec(),
            Some(r) => {
                let literal = anchored_literal(&r.regex)?;
                if r.repl.contains('$') {
                    return None;
                }
                let rest = source.strip_prefix(literal.as_bytes())?;
                [r.repl.as_bytes(), rest].concat()
            }
        };
        let entry = !dst.is_empty();
        // Below a dropped root, `/name`.
        let dst = if entry {
            go_path_clean(&dst)
        } else {
            b"/".to_vec()
        };
        if dst.first() != Some(&b'/') {
            return None;
        }
        mounts.push(Mount {
            which,
            source: source.to_vec(),
            dst: split_path(&dst),
            entry,
        });
    }
    Some(mounts)
}

/// Whether [`write_tree`] writes this layer while walking it (for tests
/// that must cover that path).
#[cfg(test)]
pub(super) fn is_mounted(paths: &[StorePath], options: TreeOptions) -> bool {
    mounts(paths, options).is_some()
}

/// One source of a destination node: a walked path (or a mount's root) that
/// lands there.
struct Source {
    which: usize,
    path: PathBuf,
    /// False for a mount's dropped root: its contents land, not itself.
    entry: bool,
}

/// A source directory that lands on a destination directory.
struct Listing {
    which: usize,
    dir: PathBuf,
    /// Its entries' names, sorted by bytes.
    names: Vec<Box<[u8]>>,
}

/// A destination directory being written: where its children come from.
struct OpenDir {
    dst: Vec<u8>,
    /// Components of `dst`.
    depth: usize,
    /// The source directories that land here, in store path order.
    listings: Vec<Listing>,
    /// Mounts strictly below this directory.
    mounts: Vec<usize>,
    /// Every child name, last first (they are popped).
    names: Vec<Box<[u8]>>,
}

/// Writes a layer of [`mounts`] while walking it: the merged tree's nodes in
/// its order (depth first, children in byte order), each found by listing
/// the source directories that land on its parent, so that only the
/// directories being written are held. Where sources meet (`copyToRoot`
/// paths, or a path landing inside another's directories), the entries are
/// checked and chosen as [`Builder::add`] does: the last in store path
/// order wins.
fn write_mounted<W: Write>(paths: &[StorePath], mounts: &[Mount], out: W) -> Result<W, N2cError> {
    let compiled: Vec<Compiled<'_>> = paths.iter().map(compile).collect::<Result<_, _>>()?;
    let mut tw = GoTarWriter::new(out);
    let mut buf = vec![0u8; 64 * 1024];
    // The tree's root has no entry of its own: its children are the first
    // components of the destinations.
    let mut open = vec![open_dir(
        Vec::new(),
        0,
        Vec::new(),
        (0..mounts.len()).collect(),
        mounts,
    )];
    while let Some(dir) = open.last_mut() {
        let Some(name) = dir.names.pop() else {
            open.pop();
            continue;
        };
        let dst = child_dst(&dir.dst, &name);
        let depth = dir.depth + 1;
        let mut sources: Vec<Source> = Vec::new();
        for listing in &dir.listings {
            if listing.names.binary_search(&name).is_ok() {
                let path = go_path_join(&[listing.dir.as_os_str().as_bytes(), &name]);
                sources.push(Source {
                    which: listing.which,
                    path: PathBuf::from(OsString::from_vec(path)),
                    entry: true,
                });
            }
        }
        let mut below = Vec::new();
        for &m in &dir.mounts {
            let mount = &mounts[m];
            if mount.dst[depth - 1] != *name {
                continue;
            }
            if mount.dst.len() == depth {
                sources.push(Source {
                    which: mount.which,
                    path: PathBuf::from(OsStr::from_bytes(&mount.source)),
                    entry: mount.entry,
                });
            } else {
                below.push(m);
            }
        }
        sources.sort_by_key(|s| s.which);
        // lstat each source; the entry is the last one, once it agrees with
        // the one before (as the tree checks each insertion).
        let mut stats = Vec::with_capacity(sources.len());
        let mut winner: Option<usize> = None;
        for (i, source) in sources.iter().enumerate() {
            let stat = Stat::of(
                &fs::symlink_metadata(&source.path).map_err(|e| N2cError::Io {
                    path: source.path.clone(),
                    source: e,
                })?,
            );
            stats.push(stat);
            if !source.entry {
                continue;
            }
            if let Some(w) = winner {
                let old = (&stats[w], &compiled[sources[w].which]);
                if let Some(what) = collision(old, (&stat, &compiled[source.which])) {
                    return Err(N2cError::Collision {
                        destination: PathBuf::from(OsStr::from_bytes(&dst)),
                        first: sources[w].path.clone(),
                        second: source.path.clone(),
                        what,
                    });
                }
            }
            winner = Some(i);
        }
        let located = winner.map(|w| Located {
            stat: stats[w],
            source: sources[w].path.clone(),
            unhacked: None,
        });
        let options = winner.map(|w| &compiled[sources[w].which]);
        write_entry(&mut tw, &dst, located.as_ref().zip(options), &mut buf)?;
        let mut listings = Vec::new();
        for (source, stat) in sources.into_iter().zip(stats) {
            if stat.is(S_IFDIR) {
                listings.push(Listing {
                    which: source.which,
                    names: read_names(&source.path)?,
                    dir: source.path,
                });
            }
        }
        if !listings.is_empty() || !below.is_empty() {
            let child = open_dir(dst, depth, listings, below, mounts);
            open.push(child);
        }
    }
    finish(tw)
}

/// An [`OpenDir`]: its child names are those of its listings and the next
/// components of the mounts below it.
fn open_dir(
    dst: Vec<u8>,
    depth: usize,
    listings: Vec<Listing>,
    below: Vec<usize>,
    mounts: &[Mount],
) -> OpenDir {
    let mut names: Vec<Box<[u8]>> = listings
        .iter()
        .flat_map(|listing| listing.names.iter().cloned())
        .chain(
            below
                .iter()
                .map(|&m| mounts[m].dst[depth].clone().into_boxed_slice()),
        )
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names.dedup();
    OpenDir {
        dst,
        depth,
        listings,
        mounts: below,
        names,
    }
}

/// A directory's entry names, sorted by bytes.
fn read_names(dir: &Path) -> Result<Vec<Box<[u8]>>, N2cError> {
    let io_err = |source| N2cError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut names: Vec<Box<[u8]>> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        names.push(entry.map_err(io_err)?.file_name().into_vec().into());
    }
    names.sort_unstable();
    Ok(names)
}

/// nix2container's check when a second source lands where a first one did:
/// what differs (`modes`, `sizes` of regular files, `perms` lists when the
/// first has options), or `None` when the second may replace the first.
fn collision(
    (old, old_options): (&Stat, &Compiled<'_>),
    (new, new_options): (&Stat, &Compiled<'_>),
) -> Option<&'static str> {
    if old.mode != new.mode {
        return Some("modes");
    }
    if old.is(S_IFREG) && old.size != new.size {
        return Some("sizes");
    }
    if let Some(old_perms) = old_options.raw_perms {
        if old_perms != new_options.raw_perms.unwrap_or(&[]) {
            return Some("perms");
        }
    }
    None
}

/// Writes one entry: `dst`'s header (a synthetic directory when there is
/// no `entry`), then a regular file's bytes.
fn write_entry<W: Write>(
    tw: &mut GoTarWriter<W>,
    dst: &[u8],
    entry: Option<(&Located<'_>, &Compiled<'_>)>,
    buf: &mut [u8],
) -> Result<(), N2cError> {
    let hdr = match entry {
        None => Header {
            name: dst.to_vec(),
            typeflag: TYPE_DIR,
            mode: 0o755,
            mtime: 1,
            uname: b"root".to_vec(),
            gname: b"root".to_vec(),
            ..Header::default()
        },
        Some((located, compiled)) => entry_header(located, compiled, dst.to_vec())?,
    };
    tw.write_header(&hdr).map_err(|source| N2cError::Tar {
        name: String::from_utf8_lossy(dst).into_owned(),
        source,
    })?;
    if let Some((located, _)) = entry {
        if hdr.typeflag == TYPE_REG {
            copy_file(located, tw, buf)?;
        }
    }
    Ok(())
}

/// The end-of-archive blocks.
fn finish<W: Write>(tw: GoTarWriter<W>) -> Result<W, N2cError> {
    tw.finish().map_err(|source| N2cError::Tar {
        name: "end of archive".into(),
        source,
    })
}

/// Go's `tar.FileInfoHeader` plus nix2container's overrides.
fn entry_header(
    entry: &Located<'_>,
    compiled: &Compiled<'_>,
    name: Vec<u8>,
) -> Result<Header, N2cError> {
    let stat = entry.stat;
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
        expected: entry.stat.size,
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

    /// A store of `count` store paths under `dir/store/nix/store`, each a
    /// tree of directories, files of random sizes, symlinks and empty
    /// directories, with names whose byte order differs from their order
    /// as paths (`a-b` < `a.b` < `a/…`, upper case, invalid UTF-8).
    fn random_store(dir: &Path, count: usize, seed: u32) -> Vec<PathBuf> {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let mut next = crate::layer::test_data::xorshift(seed);
        let names: [&[u8]; 10] = [
            b"a",
            b"a-b",
            b"a.b",
            b"a b",
            b"A",
            b"a0",
            "é".as_bytes(),
            b"\xff\xfe",
            b"~x",
            b"z",
        ];
        let store = dir.join("store/nix/store");
        let mut roots = Vec::new();
        for i in 0..count {
            let root = store.join(format!("{i:032}-pkg-{}", next() % 100));
            let mut dirs = vec![root.clone()];
            fs::create_dir_all(&root).unwrap();
            for _ in 0..40 {
                let parent = dirs[next() as usize % dirs.len()].clone();
                let name = OsStr::from_bytes(names[next() as usize % names.len()]);
                let path = parent.join(name);
                if fs::symlink_metadata(&path).is_ok() {
                    continue;
                }
                match next() % 4 {
                    0 => {
                        fs::create_dir(&path).unwrap();
                        dirs.push(path);
                    }
                    1 => symlink("../target", &path).unwrap(),
                    _ => {
                        let len = next() as usize % 5000;
                        fs::write(&path, (0..len).map(|_| next() as u8).collect::<Vec<_>>())
                            .unwrap();
                        let mode = if next() % 2 == 0 { 0o755 } else { 0o444 };
                        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                    }
                }
            }
            roots.push(root);
        }
        // A store path that is a single file.
        let file = store.join(format!("{count:032}-script"));
        fs::write(&file, "#!/bin/sh\n").unwrap();
        roots.push(file);
        roots
    }

    fn store_path(path: &Path, rewrite: Option<(&str, &str)>, perms: Vec<Perm>) -> StorePath {
        use super::super::image::{PathOptions, Rewrite};
        StorePath {
            path: path.to_owned(),
            options: Some(PathOptions {
                rewrite: rewrite
                    .map(|(regex, repl)| Rewrite {
                        regex: regex.into(),
                        repl: repl.into(),
                    })
                    .unwrap_or_default(),
                perms,
            }),
        }
    }

    /// Two `copyToRoot`-style roots under `dir/store/nix/store` whose
    /// contents meet in `/`: shared directories, a file both have alike
    /// (the second wins), a `nix/var` that lands among the store paths.
    /// `clash` makes them disagree as the named check would see it.
    fn roots_that_meet(dir: &Path, clash: Option<&str>) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let store = dir.join("store/nix/store");
        let (a, b) = (store.join("aaaa-root"), store.join("bbbb-root"));
        for d in ["bin", "etc", "nix/var/nix"] {
            fs::create_dir_all(a.join(d)).unwrap();
        }
        for d in ["bin", "share/doc", "nix"] {
            fs::create_dir_all(b.join(d)).unwrap();
        }
        fs::write(a.join("bin/sh"), "sh from a").unwrap();
        fs::write(a.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        fs::write(a.join("same"), "one").unwrap();
        fs::write(b.join("same"), "two").unwrap();
        fs::write(b.join("bin/ls"), "ls").unwrap();
        fs::write(b.join("share/doc/README"), "read me").unwrap();
        symlink("/bin/sh", b.join("bin/bash")).unwrap();
        match clash {
            Some("sizes") => fs::write(b.join("same"), "three").unwrap(),
            Some("modes") => {
                fs::set_permissions(b.join("same"), fs::Permissions::from_mode(0o600)).unwrap()
            }
            _ => {}
        }
        (a, b)
    }

    #[test]
    fn mounted_layers_are_written_as_the_merged_tree_would_be() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = random_store(tmp.path(), 5, 0x1234_5678);
        let (a, b) = roots_that_meet(tmp.path(), None);
        let prefix = tmp.path().join("store");
        let literal = format!("^{}", regex::escape(prefix.to_str().unwrap()));
        let to_root = |r: &Path| format!("^{}", regex::escape(r.to_str().unwrap()));
        let perm = Perm {
            regex: "a-b".into(),
            uid: 7,
            mode: "0700".into(),
            ..Perm::default()
        };
        let plain = |r: &PathBuf| store_path(r, None, vec![]);
        let moved = |r: &PathBuf| store_path(r, Some((&literal, "")), vec![]);
        // As nix2container writes it: `^` and the path, unescaped (the
        // temporary directory's name has a dot).
        let unescaped = format!("^{}", a.display());
        assert!(unescaped.contains('.'));
        let mut copy_to_root = vec![
            store_path(&a, Some((&unescaped, "")), vec![]),
            store_path(&b, Some((&to_root(&b), "")), vec![]),
        ];
        copy_to_root.extend(roots.iter().map(moved));
        let variants: Vec<(&str, Vec<StorePath>)> = vec![
            ("as they are", roots.iter().map(plain).collect()),
            (
                "prefix removed, with perms",
                roots
                    .iter()
                    .map(|r| store_path(r, Some((&literal, "")), vec![perm.clone()]))
                    .collect(),
            ),
            (
                "prefix replaced, listed out of order",
                roots
                    .iter()
                    .rev()
                    .map(|r| store_path(r, Some((&literal, "/opt/x")), vec![]))
                    .collect(),
            ),
            (
                "copyToRoot roots meeting in / above the store",
                copy_to_root,
            ),
            (
                "a root moved to / whole (its own entry is /)",
                vec![
                    store_path(&a, Some((&to_root(&a), "/")), vec![]),
                    moved(&roots[0]),
                ],
            ),
            (
                "the same path twice",
                vec![plain(&roots[0]), plain(&roots[1]), plain(&roots[0])],
            ),
            (
                "different directories",
                vec![plain(&roots[0]), moved(&roots[1])],
            ),
        ];
        for (name, paths) in variants {
            assert!(
                mounts(&paths, TreeOptions::default()).is_some(),
                "{name}: not mounted"
            );
            let walked = write_tree(&paths, TreeOptions::default(), Vec::new()).unwrap();
            let merged = write_merged(&paths, TreeOptions::default(), Vec::new()).unwrap();
            assert!(walked.len() > 10_000, "{name}: {} bytes", walked.len());
            assert!(walked == merged, "{name}: the two writers differ");
        }
    }

    #[test]
    fn mounted_layers_refuse_the_collisions_the_tree_refuses() {
        for clash in ["sizes", "modes", "perms"] {
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = roots_that_meet(tmp.path(), Some(clash));
            let to_root = |r: &Path| format!("^{}", regex::escape(r.to_str().unwrap()));
            let perms = |r: &Path| {
                if clash == "perms" && r == a {
                    vec![Perm {
                        regex: "same$".into(),
                        uid: 7,
                        ..Perm::default()
                    }]
                } else {
                    vec![]
                }
            };
            let paths: Vec<StorePath> = [&a, &b]
                .iter()
                .map(|r| store_path(r, Some((&to_root(r), "")), perms(r)))
                .collect();
            assert!(mounts(&paths, TreeOptions::default()).is_some());
            let what = |result: Result<Vec<u8>, N2cError>| match result {
                Err(N2cError::Collision {
                    destination, what, ..
                }) => (destination, what),
                other => panic!("{clash}: {:?}", other.map(|tar| tar.len())),
            };
            let walked = what(write_tree(&paths, TreeOptions::default(), Vec::new()));
            let merged = what(write_merged(&paths, TreeOptions::default(), Vec::new()));
            assert_eq!(walked, merged, "{clash}");
            // Perms lists are compared wherever the two meet, and `/bin`
            // comes first.
            let first = if clash == "perms" { "/bin" } else { "/same" };
            assert_eq!(walked, (PathBuf::from(first), clash), "{clash}");
        }
    }

    #[test]
    fn layers_the_walk_cannot_map_take_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = random_store(tmp.path(), 2, 0x9e37_79b9);
        let plain = |r: &PathBuf| store_path(r, None, vec![]);
        let rewritten =
            |r: &PathBuf, regex: &str, repl: &str| store_path(r, Some((regex, repl)), vec![]);
        let root0 = regex::escape(roots[0].to_str().unwrap());
        let unclean = PathBuf::from(format!("{}/", roots[1].display()));
        let cases: Vec<(&str, Vec<StorePath>, TreeOptions)> = vec![
            (
                "a pattern that is not a literal",
                vec![rewritten(&roots[0], "^/.*/store", ""), plain(&roots[1])],
                TreeOptions::default(),
            ),
            (
                "a replacement with $",
                vec![rewritten(&roots[0], "^/", "/$1"), plain(&roots[1])],
                TreeOptions::default(),
            ),
            (
                "a literal the path does not begin with",
                vec![rewritten(&roots[0], "^/elsewhere", ""), plain(&roots[1])],
                TreeOptions::default(),
            ),
            (
                "a relative destination",
                vec![
                    rewritten(&roots[0], &format!("^{root0}"), "x"),
                    plain(&roots[1]),
                ],
                TreeOptions::default(),
            ),
            (
                "an unclean path",
                vec![plain(&roots[0]), plain(&unclean)],
                TreeOptions::default(),
            ),
            (
                "case hacks stripped",
                vec![plain(&roots[0]), plain(&roots[1])],
                TreeOptions {
                    strip_case_hack: true,
                },
            ),
        ];
        for (name, paths, options) in cases {
            assert!(mounts(&paths, options).is_none(), "{name}");
        }
        // And the checks do not reject the plain case they guard.
        assert!(mounts(
            &[plain(&roots[0]), plain(&roots[1])],
            TreeOptions::default()
        )
        .is_some());
    }

    #[test]
    fn tree_nodes_stay_small() {
        // A merged layer of hundreds of thousands of files holds one Node
        // and one Entry per file until the tar is written: keep them lean (a
        // std Metadata alone is over 150 bytes).
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

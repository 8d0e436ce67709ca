//! The one-pass docker-archive reader (formats.md §1).
//!
//! A docker-archive may put `manifest.json` last (`streamLayeredImage`), so
//! the reader cannot know which members are layers until the end. It reads
//! the tar strictly in order from a plain `Read` (a pipe, a decompressor),
//! never seeks and never copies the archive:
//!
//! * a member of at most [`SMALL_MEMBER`] bytes is kept in memory (configs,
//!   `manifest.json`, `json`, `VERSION`, `repositories`, and small layers),
//!   within an overall [`BUFFER_BUDGET`]; a kept member that the manifest
//!   cites as a layer is encoded at the end;
//! * a larger member that is JSON (first byte `{` or `[`, not a tar header)
//!   or is named like metadata (`*.json`, `json`, `VERSION`, `repositories`,
//!   `oci-layout`) is kept too, up to [`METADATA_LIMIT`];
//! * any other member is a *layer candidate*: it is hashed, compressed and
//!   spooled as it streams ([`crate::layer::encode_layer`]), and
//!   [`ReadEvent::LayerStarted`] lets uploads follow the spool at once. A
//!   candidate the manifest never cites is dropped with its spool. A gzip or
//!   zstd member (`docker save` from containerd's image store keeps layers
//!   compressed, as skopeo's reader accepts too) is decompressed first.
//!
//! A member named `<64 hex>/layer.tar`, `blobs/sha256/<64 hex>` or
//! `<64 hex>.tar` gives a *hint* of its diff_id. The hint only chooses
//! whether the destination may already have the layer
//! ([`ReadOptions::known`]); such a member is then only hashed, and it must
//! hash to its hint. While the map cannot answer yet (the registry reads
//! are still out, [`MapReadiness`]), such a member is compressed
//! on speculation rather than waited for: the stream goes on meanwhile, and
//! the answer, once in, either starts its upload or stops the compression
//! (see `Pass::speculate`). At the end `manifest.json` and
//! the config are parsed and every `Layers[i]` is checked against
//! `rootfs.diff_ids[i]` with the hashes computed from the bytes.
//!
//! This runs on a blocking thread; uploading, manifests and platforms are for
//! later stages.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::digest::Digest;
use crate::layer::{self, Compression, EncodedLayer, Spool};
use crate::oci::{ConfigSummary, Descriptor};

use super::detect::{is_tar_header, ArchiveCompression};
use super::tar_index::{normalize, resolve_relative, TarIndex, MAX_LINKS};
use super::InputError;

/// Members up to this size are kept in memory until the manifest says what
/// they are.
pub const SMALL_MEMBER: u64 = 1 << 20;
/// How much all kept small members may add up to; past it, small members are
/// classified like large ones.
pub const BUFFER_BUDGET: u64 = 64 << 20;
/// The largest JSON member kept (a config with a very long history).
pub const METADATA_LIMIT: u64 = 16 << 20;
/// How many raw bytes of a layer are read between two progress events.
const PROGRESS_STEP: u64 = 1 << 20;

/// The known-layer map: the descriptor of a layer the destinations already
/// have, by diff_id. A lookup may block (a HEAD on the runtime, a wait for
/// another input's upload): call it from a blocking thread, never from
/// async code, where it would panic or stall a worker.
pub type KnownLayers = Arc<dyn Fn(&Digest) -> Option<Descriptor> + Send + Sync>;

/// How layers are read.
#[derive(Clone)]
pub struct ReadOptions {
    pub compression: Compression,
    /// Where spool files go (they are unlinked at once).
    pub spool_dir: PathBuf,
    /// Layers the destinations already have, by diff_id (known-layer map): such a member is
    /// only hashed (crate::layer::hash_only), never compressed/spooled.
    pub known: KnownLayers,
    /// When `known` can answer (see [`MapReadiness`]).
    pub readiness: Arc<dyn MapReadiness>,
}

/// When the known-layer map can answer, as a reader sees it: within a
/// publish, its gate and the registries behind it; elsewhere, at once
/// ([`ReadyAtOnce`]).
pub trait MapReadiness: Send + Sync {
    /// Whether `known` answers at once. It does not while the registry
    /// reads it waits for are out; a member it may know is then compressed
    /// on speculation instead of holding the input up.
    fn is_ready(&self) -> bool;
    /// Blocks until `known` answers at once; false when the registry reads
    /// failed (the publish is ending). Called without an encoding slot: a
    /// slot holder must not wait for the registry reads, which in a batch
    /// wait for the images before this one, and those need slots.
    fn wait(&self) -> bool;
    /// Whether to compress on speculation while `known` cannot answer: not
    /// while a registry fails to answer at all (the run may end with its
    /// error); the input then waits for `known`.
    fn may_speculate(&self) -> bool;
}

/// A known-layer map that answers at once.
pub struct ReadyAtOnce;

impl MapReadiness for ReadyAtOnce {
    fn is_ready(&self) -> bool {
        true
    }
    fn wait(&self) -> bool {
        true
    }
    fn may_speculate(&self) -> bool {
        true
    }
}

impl ReadOptions {
    /// Options with an empty known-layer map.
    pub fn new(compression: Compression, spool_dir: impl Into<PathBuf>) -> ReadOptions {
        ReadOptions {
            compression,
            spool_dir: spool_dir.into(),
            known: Arc::new(|_| None),
            readiness: Arc::new(ReadyAtOnce),
        }
    }
}

/// Which image of a docker-archive to read: `archive:PATH:REF` or
/// `archive:PATH:@N`, as skopeo's `docker-archive:` transport takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ImageChoice {
    /// The archive's only image.
    #[default]
    Only,
    /// The image whose `RepoTags` has this reference (`fd:1.0`;
    /// `docker.io/library/fd:1.0` names the same).
    Reference(String),
    /// The image at this position of `manifest.json`, from 0.
    Index(usize),
}

impl ImageChoice {
    /// `@N` is a position, anything else a reference.
    pub fn parse(text: &str) -> ImageChoice {
        match text.strip_prefix('@').map(str::parse::<usize>) {
            Some(Ok(n)) => ImageChoice::Index(n),
            _ => ImageChoice::Reference(text.to_owned()),
        }
    }

    /// The chosen entry of `manifest.json`.
    fn pick(
        &self,
        input: &str,
        mut entries: Vec<ManifestEntry>,
    ) -> Result<ManifestEntry, InputError> {
        let position = match self {
            ImageChoice::Only if entries.len() == 1 => Some(0),
            ImageChoice::Only => {
                return Err(InputError::ImageCount {
                    input: input.to_owned(),
                    count: entries.len(),
                    images: describe_images(&entries),
                })
            }
            ImageChoice::Index(n) => Some(*n).filter(|n| *n < entries.len()),
            ImageChoice::Reference(wanted) => entries.iter().position(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|tag| same_reference(tag, wanted))
            }),
        };
        match position {
            Some(n) => Ok(entries.swap_remove(n)),
            None => Err(InputError::NoSuchImage {
                input: input.to_owned(),
                wanted: match self {
                    ImageChoice::Index(n) => format!("@{n}"),
                    ImageChoice::Reference(r) => r.clone(),
                    ImageChoice::Only => String::new(),
                },
                images: describe_images(&entries),
            }),
        }
    }
}

/// Whether two references name the same image, as Docker reads them
/// (`fd:1.0` is `docker.io/library/fd:1.0`).
fn same_reference(a: &str, b: &str) -> bool {
    a == b
        || match (
            crate::reference::Reference::parse(a),
            crate::reference::Reference::parse(b),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// Each image of `manifest.json` as `@N` and its tags, for messages.
fn describe_images(entries: &[ManifestEntry]) -> String {
    entries
        .iter()
        .enumerate()
        .map(|(n, e)| match e.repo_tags.as_deref() {
            Some(tags) if !tags.is_empty() => format!("@{n} `{}`", tags.join("`, `")),
            _ => format!("@{n} (untagged)"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The image a read keeps, and, when known before reading (a plain file's
/// `manifest.json` read ahead by [`Selection::prepare`]), the members that
/// are its layers: other images' layers are then skipped unread, never
/// compressed or uploaded.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub choice: ImageChoice,
    layers: Option<std::collections::HashSet<String>>,
}

impl Selection {
    /// The selection of `choice` in the archive at `path` (`input` names it
    /// in messages). A plain tar file is looked into at once: a choice it
    /// lacks, or several images when none was chosen, fail before anything
    /// is read, and members that are not the image's layers are then
    /// skipped unread. A compressed file is only read once, so its choice
    /// is checked at its end.
    pub fn prepare(
        input: &str,
        path: &std::path::Path,
        choice: ImageChoice,
    ) -> Result<Selection, InputError> {
        let unchecked = Selection {
            choice: choice.clone(),
            layers: None,
        };
        match Self::look_ahead(input, path, choice) {
            Ok(Some(selection)) => Ok(selection),
            Ok(None) => Ok(unchecked),
            // Without a choice, anything else wrong is for the reader to
            // name as it meets it (a cut archive, no `manifest.json`).
            Err(e)
                if unchecked.choice == ImageChoice::Only
                    && !matches!(e, InputError::ImageCount { .. }) =>
            {
                Ok(unchecked)
            }
            Err(e) => Err(e),
        }
    }

    /// The chosen image's layer members, read from a plain file's
    /// `manifest.json`; `None` for a compressed file.
    fn look_ahead(
        input: &str,
        path: &std::path::Path,
        choice: ImageChoice,
    ) -> Result<Option<Selection>, InputError> {
        let open_err = |source| InputError::Open {
            input: input.to_owned(),
            source,
        };
        if ArchiveCompression::of_file(path).map_err(open_err)? != ArchiveCompression::None {
            return Ok(None);
        }
        let file = std::fs::File::open(path).map_err(open_err)?;
        let index = TarIndex::scan(input, file)?;
        let manifest = index.read(
            input,
            path,
            "manifest.json",
            METADATA_LIMIT,
            "the image list",
        )?;
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(&manifest).map_err(|source| InputError::BadManifest {
                input: input.to_owned(),
                source,
            })?;
        let entry = choice.pick(input, entries)?;
        let mut layers = std::collections::HashSet::new();
        for cited in &entry.layers {
            let cited = normalize(cited);
            if let Some(target) = index.target(&cited) {
                layers.insert(target);
            }
            layers.insert(cited);
        }
        Ok(Some(Selection {
            choice,
            layers: Some(layers),
        }))
    }

    /// Whether the member `name` may be a layer of the chosen image.
    fn may_be_layer(&self, name: &str) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(name))
    }
}

/// What the reader reports while it reads.
pub enum ReadEvent {
    /// A member that is a layer candidate started; uploads may follow `spool` right away.
    LayerStarted {
        member: String,
        /// Uncompressed bytes; 0 when unknown (a compressed member).
        size: u64,
        spool: Spool,
    },
    /// Uncompressed bytes of the member read so far.
    LayerProgress { member: String, bytes: u64 },
    LayerFinished {
        member: String,
        encoded: EncodedLayer,
    },
    /// A known layer, only hashed.
    LayerSkipped { member: String, diff_id: Digest },
}

/// One image read from a docker-archive.
#[derive(Clone)]
pub struct ArchiveImage {
    /// The config's exact bytes: it is uploaded as is.
    pub config: Bytes,
    pub config_digest: Digest,
    pub summary: ConfigSummary,
    /// In manifest order (bottom to top).
    pub layers: Vec<ArchiveLayer>,
    pub repo_tags: Vec<String>,
}

#[derive(Clone)]
pub struct ArchiveLayer {
    pub member: String,
    pub diff_id: Digest,
    pub blob: LayerBlob,
}

#[derive(Clone)]
pub enum LayerBlob {
    /// Compressed into a spool by this pass.
    Spooled { spool: Spool, encoded: EncodedLayer },
    /// The destination has it already (from [`ReadOptions::known`]).
    Known { descriptor: Descriptor },
}

/// `manifest.json`: one entry per image.
#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// What the pass kept of a member.
enum Member {
    Small(Bytes),
    Encoded {
        spool: Spool,
        encoded: EncodedLayer,
    },
    Known {
        diff_id: Digest,
        descriptor: Descriptor,
    },
    /// A symlink or hard link to another member (older `docker save` links
    /// repeated layers).
    Link(String),
}

/// Reads a whole docker-archive from `reader` in one pass. `input` names it
/// in messages.
pub fn read_docker_archive(
    input: &str,
    reader: &mut dyn Read,
    opts: &ReadOptions,
    on_event: &mut dyn FnMut(ReadEvent),
) -> Result<ArchiveImage, InputError> {
    read_selected(input, reader, opts, &Selection::default(), on_event)
}

/// [`read_docker_archive`] of the image `selection` chooses.
pub fn read_selected(
    input: &str,
    reader: &mut dyn Read,
    opts: &ReadOptions,
    selection: &Selection,
    on_event: &mut dyn FnMut(ReadEvent),
) -> Result<ArchiveImage, InputError> {
    read_with_budget(input, reader, opts, selection, on_event, BUFFER_BUDGET)
}

fn read_with_budget(
    input: &str,
    reader: &mut dyn Read,
    opts: &ReadOptions,
    selection: &Selection,
    on_event: &mut dyn FnMut(ReadEvent),
    budget: u64,
) -> Result<ArchiveImage, InputError> {
    let mut pass = Pass {
        input,
        opts,
        selection,
        members: HashMap::new(),
        pending: Vec::new(),
        buffered: 0,
        budget,
    };
    let tracker = Tracker::new(reader);
    let state = tracker.state.clone();
    let mut archive = tar::Archive::new(tracker);
    // The tar crate reports a cut archive as a bad header or a short skip;
    // when the input had ended, say what happened.
    let tar_err = |source| {
        if state.borrow().eof {
            InputError::Truncated {
                input: input.to_owned(),
            }
        } else {
            InputError::Tar {
                input: input.to_owned(),
                source,
            }
        }
    };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let end = entry
            .raw_file_position()
            .saturating_add(entry.size())
            .div_ceil(512)
            .saturating_mul(512);
        state.borrow_mut().set_mark(end);
        pass.member(&mut entry, on_event)?;
    }
    // Read to the end, so a stream's writer is not cut off, and check the
    // end-of-archive blocks: a cut pipe looks like a shorter archive.
    let mut tracker = archive.into_inner();
    io::copy(&mut tracker, &mut io::sink()).map_err(|source| InputError::Read {
        input: input.to_owned(),
        source,
    })?;
    let state = state.borrow();
    if state.pos == 0 {
        return Err(InputError::Empty {
            input: input.to_owned(),
        });
    }
    if !state.ends_with_end_blocks() {
        return Err(InputError::Truncated {
            input: input.to_owned(),
        });
    }
    drop(state);
    pass.resolve(on_event)
}

struct Pass<'a> {
    input: &'a str,
    opts: &'a ReadOptions,
    selection: &'a Selection,
    members: HashMap<String, Member>,
    /// Members compressed on speculation whose end came before `known`
    /// could answer, with their hints: not yet announced.
    pending: Vec<(String, Digest)>,
    buffered: u64,
    /// [`BUFFER_BUDGET`], smaller in tests.
    budget: u64,
}

impl Pass<'_> {
    fn member_err(&self, member: &str, source: io::Error) -> InputError {
        InputError::Member {
            input: self.input.to_owned(),
            member: member.to_owned(),
            source,
        }
    }

    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<(), InputError> {
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let target = if kind.is_symlink() {
                resolve_relative(&name, &target)
            } else {
                normalize(&target)
            };
            self.members.insert(name, Member::Link(target));
            return Ok(());
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Ok(());
        }
        let size = entry.size();
        let mut body = Exact {
            inner: entry,
            remaining: size,
        };
        if size <= SMALL_MEMBER && self.buffered + size <= self.budget {
            let bytes = read_all(&mut body, size).map_err(|e| self.member_err(&name, e))?;
            self.buffered += size;
            self.members.insert(name, Member::Small(bytes));
            return Ok(());
        }
        // Look at the first block to tell a layer from metadata.
        let mut head = Vec::with_capacity(512);
        (&mut body)
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| self.member_err(&name, e))?;
        let first = head.iter().find(|b| !b.is_ascii_whitespace());
        let json = matches!(first, Some(b'{' | b'['));
        if (json && !is_tar_header(&head)) || is_metadata_name(&name) {
            // Counted against the budget too, so that many large JSON
            // members cannot add up without bound.
            if size > METADATA_LIMIT || self.buffered + size > self.budget + METADATA_LIMIT {
                return Err(InputError::MemberTooLarge {
                    input: self.input.to_owned(),
                    member: name,
                    size,
                    limit: METADATA_LIMIT,
                });
            }
            let mut rest = read_all(&mut body, size - head.len() as u64)
                .map_err(|e| self.member_err(&name, e))?
                .to_vec();
            head.append(&mut rest);
            self.buffered += size;
            self.members.insert(name, Member::Small(Bytes::from(head)));
            return Ok(());
        }
        if !self.selection.may_be_layer(&name) {
            // Another image's layer.
            io::copy(&mut body, &mut io::sink()).map_err(|e| self.member_err(&name, e))?;
            return Ok(());
        }
        // A compressed layer (`docker save` from containerd's image store
        // keeps layers as they were pulled) is read decompressed: its diff_id
        // is the hash of the tar inside, and its name gives no hint of that.
        let compression = ArchiveCompression::sniff(&head);
        let hint = match compression {
            ArchiveCompression::None => hint_of(&name),
            _ => None,
        };
        let size = raw_size(compression, size);
        let mut raw = decompressed(compression, io::Cursor::new(head).chain(body))
            .map_err(|e| self.member_err(&name, e))?;
        let member = self.layer(&name, size, &mut raw, hint, on_event)?;
        self.members.insert(name, member);
        Ok(())
    }

    /// Hashes a layer member and, unless the destination has it, compresses
    /// and spools it. `size` is its uncompressed size, 0 when unknown. A
    /// member with a hint met before `known` can answer is compressed on
    /// speculation ([`Pass::speculate`]); the members that ended so, before
    /// it could, are settled here, once it can.
    fn layer(
        &mut self,
        name: &str,
        size: u64,
        raw: &mut dyn Read,
        hint: Option<Digest>,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<Member, InputError> {
        let readiness = &self.opts.readiness;
        let mut ready = readiness.is_ready();
        if !ready && !readiness.may_speculate() {
            // Held, slot-free: a stream script blocks on its full pipe.
            if !readiness.wait() {
                let failed = io::Error::other("the registry reads failed");
                return Err(self.member_err(name, failed));
            }
            ready = true;
        }
        if ready {
            decide_pending(self.opts, &mut self.members, &mut self.pending, on_event);
        }
        // The slot comes before `known`, which claims a layer nobody has
        // (`publish::in_flight`): a claim is only ever taken with a slot in
        // hand, so whoever waits for a claim waits for a layer that is being
        // encoded, or is encoded and uploading (see `layer::slots`).
        let slot = layer::slots::Slots::global().take();
        if let Some(hint) = hint {
            if !ready {
                return self.speculate(name, size, raw, hint, slot, on_event);
            }
            if let Some(descriptor) = (self.opts.known)(&hint) {
                drop(slot);
                let (diff_id, _) =
                    layer::hash_only(raw, &mut |_| {}).map_err(|e| self.member_err(name, e))?;
                return self.known_by_hint(name, hint, diff_id, descriptor, on_event);
            }
        }
        self.encode(name, size, raw, slot, on_event)
    }

    /// An empty spool in the spool directory.
    fn new_spool(&self) -> Result<(layer::SpoolWriter, Spool), InputError> {
        layer::spool::create(&self.opts.spool_dir).map_err(|source| InputError::Spool {
            dir: self.opts.spool_dir.clone(),
            source,
        })
    }

    /// A member only hashed because the destinations have the layer its name
    /// claims: it must hash to that claim, since its own blob was not kept.
    fn known_by_hint(
        &self,
        name: &str,
        hint: Digest,
        diff_id: Digest,
        descriptor: Descriptor,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<Member, InputError> {
        if diff_id != hint {
            return Err(InputError::HintMismatch {
                input: self.input.to_owned(),
                member: name.to_owned(),
                hint,
                actual: diff_id,
            });
        }
        on_event(ReadEvent::LayerSkipped {
            member: name.to_owned(),
            diff_id: diff_id.clone(),
        });
        Ok(Member::Known {
            diff_id,
            descriptor,
        })
    }

    /// Compresses and spools a layer member the destinations lack, with the
    /// `slot` its caller took, announcing it first so its upload follows.
    fn encode(
        &mut self,
        name: &str,
        size: u64,
        raw: &mut dyn Read,
        slot: layer::slots::Slot<'_>,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<Member, InputError> {
        let (writer, spool) = self.new_spool()?;
        on_event(ReadEvent::LayerStarted {
            member: name.to_owned(),
            size,
            spool: spool.clone(),
        });
        let (mut read, mut reported) = (0u64, 0u64);
        let encoded =
            layer::encode_layer(raw, self.opts.compression, writer, slot, None, &mut |n| {
                read += n;
                // A pipe hands over 64 KiB at a time: an event per read
                // would wake the publishing task ten thousand times for a
                // 600 MB image.
                if read - reported >= PROGRESS_STEP {
                    reported = read;
                    on_event(ReadEvent::LayerProgress {
                        member: name.to_owned(),
                        bytes: read,
                    });
                }
            })
            .map_err(|e| self.member_err(name, e))?;
        on_event(ReadEvent::LayerFinished {
            member: name.to_owned(),
            encoded: encoded.clone(),
        });
        Ok(Member::Encoded { spool, encoded })
    }

    /// [`Pass::layer`] for a member with a hint while `known` cannot answer
    /// yet: rather than hold the input up until the registry reads are in,
    /// it is compressed and spooled as if new, and the map's readiness is asked
    /// before each read. Once the answer is in, a layer the destinations
    /// lack is announced (its upload follows the spool from its start) and
    /// one they have is only hashed from there on. A member that ends first
    /// waits in `pending`, so the reading goes on.
    fn speculate(
        &mut self,
        name: &str,
        size: u64,
        raw: &mut dyn Read,
        hint: Digest,
        slot: layer::slots::Slot<'_>,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<Member, InputError> {
        let (writer, spool) = self.new_spool()?;
        // Shared by the two callbacks below, which run on this thread.
        let events = RefCell::new(on_event);
        // Whether the layer was announced: the map answered that the
        // destinations lack it.
        let announced = Cell::new(false);
        let read = Cell::new(0u64);
        let (opts, members, pending) = (self.opts, &mut self.members, &mut self.pending);
        // Asked before each read until it gives the descriptor the
        // destinations have the layer under; once the map has answered
        // that they lack it, the answer stands.
        let mut skip = || {
            if announced.get() || !opts.readiness.is_ready() {
                return None;
            }
            let mut on_event = events.borrow_mut();
            decide_pending(opts, members, pending, &mut **on_event);
            let found = (opts.known)(&hint);
            if found.is_none() {
                announce(&mut **on_event, name, size, &spool, read.get());
                announced.set(true);
            }
            found
        };
        let mut reported = 0u64;
        let mut on_read = |n: u64| {
            read.set(read.get() + n);
            if announced.get() && read.get() - reported >= PROGRESS_STEP {
                reported = read.get();
                (events.borrow_mut())(ReadEvent::LayerProgress {
                    member: name.to_owned(),
                    bytes: read.get(),
                });
            }
        };
        let outcome = layer::encode_layer_unless(
            raw,
            self.opts.compression,
            writer,
            slot,
            &mut on_read,
            &mut skip,
        )
        .map_err(|e| self.member_err(name, e))?;
        let on_event = events.into_inner();
        match outcome {
            layer::Speculation::Skipped {
                diff_id,
                reason: descriptor,
                ..
            } => self.known_by_hint(name, hint, diff_id, descriptor, on_event),
            layer::Speculation::Encoded(encoded) if announced.get() => {
                on_event(ReadEvent::LayerFinished {
                    member: name.to_owned(),
                    encoded: encoded.clone(),
                });
                Ok(Member::Encoded { spool, encoded })
            }
            // The map could not answer before the member ended.
            layer::Speculation::Encoded(encoded) => {
                self.pending.push((name.to_owned(), hint));
                Ok(Member::Encoded { spool, encoded })
            }
        }
    }

    /// Follows links to the member `name` really is.
    fn target(&self, name: &str) -> Option<String> {
        let mut name = normalize(name);
        for _ in 0..=MAX_LINKS {
            match self.members.get(&name)? {
                Member::Link(to) => name = to.clone(),
                _ => return Some(name),
            }
        }
        None
    }

    fn missing(&self, member: &str, role: &'static str) -> InputError {
        InputError::MissingMember {
            input: self.input.to_owned(),
            member: member.to_owned(),
            role,
        }
    }

    /// After the last member: parse the manifest and config, and settle
    /// every layer.
    fn resolve(mut self, on_event: &mut dyn FnMut(ReadEvent)) -> Result<ArchiveImage, InputError> {
        // Waits for `known` if it still cannot answer.
        decide_pending(self.opts, &mut self.members, &mut self.pending, on_event);
        let input = self.input.to_owned();
        let manifest = match self
            .target("manifest.json")
            .and_then(|n| self.members.get(&n))
        {
            Some(Member::Small(b)) => b.clone(),
            _ if self.members.contains_key("oci-layout") => {
                return Err(InputError::OciArchive { input })
            }
            _ => return Err(InputError::NoManifest { input }),
        };
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(&manifest).map_err(|source| InputError::BadManifest {
                input: input.clone(),
                source,
            })?;
        let entry = self.selection.choice.pick(&input, entries)?;
        let config_name = normalize(&entry.config);
        let config = match self.target(&config_name).and_then(|n| self.members.get(&n)) {
            Some(Member::Small(b)) => b.clone(),
            _ => return Err(self.missing(&config_name, "the config")),
        };
        let summary: ConfigSummary =
            serde_json::from_slice(&config).map_err(|source| InputError::BadConfig {
                input: input.clone(),
                member: config_name.clone(),
                source,
            })?;
        let diff_ids = summary
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        if diff_ids.len() != entry.layers.len() {
            return Err(InputError::LayerCount {
                input,
                member: config_name,
                diff_ids: diff_ids.len(),
                layers: entry.layers.len(),
            });
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (cited, expected) in entry.layers.iter().zip(diff_ids) {
            let cited = normalize(cited);
            let Some(name) = self.target(&cited) else {
                return Err(self.missing(&cited, "a layer"));
            };
            let layer = self.settle(&name, &cited, &expected, on_event)?;
            layers.push(layer);
        }
        Ok(ArchiveImage {
            config_digest: Digest::of(&config),
            config,
            summary,
            layers,
            repo_tags: entry.repo_tags.unwrap_or_default(),
        })
    }

    /// The layer blob of member `name` (cited as `cited`), checked against
    /// the config's diff_id. A kept small member is encoded now, once.
    fn settle(
        &mut self,
        name: &str,
        cited: &str,
        expected: &Digest,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<ArchiveLayer, InputError> {
        let mismatch = |actual: &Digest| InputError::DiffIdMismatch {
            input: self.input.to_owned(),
            member: cited.to_owned(),
            expected: expected.clone(),
            actual: actual.clone(),
        };
        let small = match self.members.get(name) {
            Some(Member::Small(b)) => b.clone(),
            Some(Member::Encoded { spool, encoded }) => {
                if encoded.diff_id != *expected {
                    return Err(mismatch(&encoded.diff_id));
                }
                return Ok(ArchiveLayer {
                    member: cited.to_owned(),
                    diff_id: encoded.diff_id.clone(),
                    blob: LayerBlob::Spooled {
                        spool: spool.clone(),
                        encoded: encoded.clone(),
                    },
                });
            }
            Some(Member::Known {
                diff_id,
                descriptor,
            }) => {
                if diff_id != expected {
                    return Err(mismatch(diff_id));
                }
                return Ok(ArchiveLayer {
                    member: cited.to_owned(),
                    diff_id: diff_id.clone(),
                    blob: LayerBlob::Known {
                        descriptor: descriptor.clone(),
                    },
                });
            }
            Some(Member::Link(_)) | None => return Err(self.missing(cited, "a layer")),
        };
        let compression = ArchiveCompression::sniff(&small);
        let diff_id = match compression {
            ArchiveCompression::None => Digest::of(&small),
            _ => {
                decompressed(compression, &small[..])
                    .and_then(|mut raw| layer::hash_only(&mut raw, &mut |_| {}))
                    .map_err(|e| self.member_err(name, e))?
                    .0
            }
        };
        if diff_id != *expected {
            return Err(mismatch(&diff_id));
        }
        // The diff_id is known before any work (a compressed member, at most
        // SMALL_MEMBER bytes, is inflated once for it and again to encode):
        // the known map is asked with the real diff_id, not a hint. The slot
        // first, as in `layer`, but only once the map can answer: a slot
        // holder waits for nothing that may need a slot (see `layer::slots`).
        // Failed reads end the publish; `known` then answers nothing.
        let _ = self.opts.readiness.wait();
        let slot = layer::slots::Slots::global().take();
        let member = match (self.opts.known)(&diff_id) {
            Some(descriptor) => {
                drop(slot);
                on_event(ReadEvent::LayerSkipped {
                    member: name.to_owned(),
                    diff_id: diff_id.clone(),
                });
                Member::Known {
                    diff_id,
                    descriptor,
                }
            }
            None => {
                let size = raw_size(compression, small.len() as u64);
                let mut raw =
                    decompressed(compression, &small[..]).map_err(|e| self.member_err(name, e))?;
                self.encode(name, size, &mut raw, slot, on_event)?
            }
        };
        // Later citations of the same member reuse this encoding.
        self.buffered = self.buffered.saturating_sub(small.len() as u64);
        self.members.insert(name.to_owned(), member);
        self.settle(name, cited, expected, on_event)
    }
}

/// Announces a layer whose upload may start: `LayerStarted`, then the raw
/// bytes read so far.
fn announce(on_event: &mut dyn FnMut(ReadEvent), name: &str, size: u64, spool: &Spool, read: u64) {
    on_event(ReadEvent::LayerStarted {
        member: name.to_owned(),
        size,
        spool: spool.clone(),
    });
    if read > 0 {
        on_event(ReadEvent::LayerProgress {
            member: name.to_owned(),
            bytes: read,
        });
    }
}

/// Settles the members compressed on speculation in `pending`, asking
/// `known` (which waits for the registry reads if they are still out): one
/// the destinations have is kept only as known, and its spool dropped; any
/// other is announced and finished, so its upload starts. A member that did
/// not hash to its hint is no known layer, whatever the map says of the
/// hint: its own blob is uploaded.
fn decide_pending(
    opts: &ReadOptions,
    members: &mut HashMap<String, Member>,
    pending: &mut Vec<(String, Digest)>,
    on_event: &mut dyn FnMut(ReadEvent),
) {
    for (name, hint) in pending.drain(..) {
        let Some(Member::Encoded { spool, encoded }) = members.get(&name) else {
            continue;
        };
        match (opts.known)(&hint) {
            Some(descriptor) if encoded.diff_id == hint => {
                on_event(ReadEvent::LayerSkipped {
                    member: name.clone(),
                    diff_id: hint.clone(),
                });
                members.insert(
                    name,
                    Member::Known {
                        diff_id: hint,
                        descriptor,
                    },
                );
            }
            _ => {
                let encoded = encoded.clone();
                announce(
                    on_event,
                    &name,
                    encoded.uncompressed_size,
                    spool,
                    encoded.uncompressed_size,
                );
                on_event(ReadEvent::LayerFinished {
                    member: name,
                    encoded,
                });
            }
        }
    }
}

/// A layer member's bytes, decompressed when they are gzip or zstd.
fn decompressed<'a>(
    compression: ArchiveCompression,
    raw: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        ArchiveCompression::None => Box::new(raw),
        ArchiveCompression::Gzip => Box::new(layer::gunzip::decoder(io::BufReader::new(raw))),
        ArchiveCompression::Zstd => Box::new(zstd::Decoder::new(raw)?),
    })
}

/// The uncompressed size of a layer member of `stored` bytes: that, or 0
/// (unknown) for a compressed one.
fn raw_size(compression: ArchiveCompression, stored: u64) -> u64 {
    match compression {
        ArchiveCompression::None => stored,
        _ => 0,
    }
}

/// Names that are docker-archive metadata, never layers, whatever their size.
fn is_metadata_name(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(
        base,
        "manifest.json" | "index.json" | "oci-layout" | "repositories" | "json" | "VERSION"
    ) || base.ends_with(".json")
}

/// The diff_id a member's name claims: `<64 hex>/layer.tar` (streamLayeredImage),
/// `blobs/sha256/<64 hex>` (docker save ≥ 25, uncompressed layers) or
/// `<64 hex>.tar` (skopeo's and podman's docker-archives, which name layers by
/// their uncompressed digest). Old `docker save` names are v1 IDs, not
/// diff_ids: they only miss the known-layer map, and a hint that does match a
/// known layer must still hash to it.
fn hint_of(name: &str) -> Option<Digest> {
    let hex = name
        .strip_suffix("/layer.tar")
        .or_else(|| name.strip_prefix("blobs/sha256/"))
        .or_else(|| name.strip_suffix(".tar").filter(|hex| !hex.contains('/')))?;
    Digest::from_hex(hex).ok()
}

/// Reads exactly `size` bytes into memory.
fn read_all(r: &mut dyn Read, size: u64) -> io::Result<Bytes> {
    let mut v = Vec::with_capacity(size.min(METADATA_LIMIT) as usize);
    r.take(size).read_to_end(&mut v)?;
    if (v.len() as u64) < size {
        return Err(truncated());
    }
    Ok(Bytes::from(v))
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the archive ends inside this member: it is truncated",
    )
}

/// A member's data: exactly its header's size, or an error when the archive
/// ends first (the tar crate would just return fewer bytes).
struct Exact<'e, R> {
    inner: &'e mut R,
    remaining: u64,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(truncated());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Where the reader is, and whether what follows the last member's data is
/// zeros: the end-of-archive marker is two zero blocks.
#[derive(Default)]
struct TrackState {
    pos: u64,
    /// End of the last member's padded data.
    mark: u64,
    /// First non-zero byte at or after `mark`.
    nonzero_after_mark: Option<u64>,
    /// Whether the input has ended.
    eof: bool,
}

impl TrackState {
    fn set_mark(&mut self, mark: u64) {
        self.mark = mark;
        self.nonzero_after_mark = None;
    }

    fn ends_with_end_blocks(&self) -> bool {
        let end = self.mark.saturating_add(1024);
        self.pos >= end && self.nonzero_after_mark.is_none_or(|p| p >= end)
    }
}

struct Tracker<'r> {
    inner: &'r mut dyn Read,
    state: std::rc::Rc<std::cell::RefCell<TrackState>>,
}

impl<'r> Tracker<'r> {
    fn new(inner: &'r mut dyn Read) -> Self {
        Tracker {
            inner,
            state: Default::default(),
        }
    }
}

impl Read for Tracker<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        if n == 0 && !buf.is_empty() {
            s.eof = true;
        }
        if s.nonzero_after_mark.is_none() && s.pos + n as u64 > s.mark {
            let skip = s.mark.saturating_sub(s.pos) as usize;
            if let Some(i) = buf[skip..n].iter().position(|b| *b != 0) {
                s.nonzero_after_mark = Some(s.pos + (skip + i) as u64);
            }
        }
        s.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::testdata;
    use crate::input::{open_archive, ArchiveSource, StreamCommand};
    use std::sync::Mutex;

    const GZIP: Compression = Compression::Gzip { level: 1 };

    fn opts(dir: &tempfile::TempDir) -> ReadOptions {
        ReadOptions::new(GZIP, dir.path())
    }

    /// Options whose destination already has `layer` (by its diff_id), and
    /// the descriptor it has it under.
    fn opts_knowing(dir: &tempfile::TempDir, layer: &[u8]) -> (ReadOptions, Descriptor) {
        let present = Descriptor::new(crate::oci::MEDIA_TYPE_LAYER_GZIP, Digest::of(b"blob"), 4);
        let mut o = opts(dir);
        o.known = Arc::new({
            let (d, p) = (Digest::of(layer), present.clone());
            move |x: &Digest| (*x == d).then(|| p.clone())
        });
        (o, present)
    }

    /// Deterministic layer tar of about `size` bytes.
    fn layer_tar(seed: u8, size: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, format!("file-{seed}"), &data[..])
            .unwrap();
        b.into_inner().unwrap()
    }

    fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "arm64", "os": "linux",
            "config": {"Labels": {"a": "b"}},
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    }

    /// An archive from `(name, bytes)` members, in order.
    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o444);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn manifest(config: &str, layers: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!([
            {"Config": config, "RepoTags": ["x:1"], "Layers": layers}
        ]))
        .unwrap()
    }

    struct Run {
        result: Result<ArchiveImage, InputError>,
        events: Vec<String>,
    }

    fn read_with(bytes: &[u8], opts: &ReadOptions) -> Run {
        let mut events = Vec::new();
        let result = read_docker_archive("test.tar", &mut &bytes[..], opts, &mut |e| {
            events.push(match e {
                ReadEvent::LayerStarted { member, size, .. } => format!("start {member} {size}"),
                ReadEvent::LayerProgress { .. } => "progress".into(),
                ReadEvent::LayerFinished { member, .. } => format!("finish {member}"),
                ReadEvent::LayerSkipped { member, .. } => format!("skip {member}"),
            })
        });
        events.dedup();
        Run { result, events }
    }

    fn err(run: Run) -> InputError {
        match run.result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    /// Reads back a spooled layer and checks its digests.
    fn check_blob(layer: &ArchiveLayer) -> Vec<u8> {
        let LayerBlob::Spooled { spool, encoded } = &layer.blob else {
            panic!("{} not spooled", layer.member);
        };
        let mut gz = Vec::new();
        spool.copy_to(&mut gz).unwrap();
        assert_eq!(Digest::of(&gz), encoded.digest);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(Digest::of(&raw), layer.diff_id);
        raw
    }

    #[test]
    fn the_stream_fixture_reads_in_one_pass_with_manifest_last() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(testdata("fd-amd64.tar")).unwrap();
        let run = read_with(&bytes, &opts(&dir));
        let image = run.result.unwrap();
        assert_eq!(image.summary.architecture, "amd64");
        assert_eq!(image.repo_tags, vec!["fd:10.2.0".to_owned()]);
        assert_eq!(image.layers.len(), 4);
        let diff_ids = image.summary.rootfs.clone().unwrap().diff_ids;
        for (layer, expected) in image.layers.iter().zip(&diff_ids) {
            assert_eq!(&layer.diff_id, expected);
            assert_eq!(layer.member, format!("{}/layer.tar", expected.hex()));
            check_blob(layer);
        }
        assert_eq!(Digest::of(&image.config), image.config_digest);
        let labels = image.summary.config.unwrap().labels.unwrap();
        assert_eq!(labels["org.opencontainers.image.version"], "10.2.0");
        // The big layer streamed at once; small ones were encoded at the end.
        let first = &image.layers[0].member;
        assert_eq!(run.events[0], format!("start {first} 1126400"));
        assert_eq!(run.events[1], "progress");
        assert_eq!(run.events[2], format!("finish {first}"));
        assert_eq!(
            run.events.iter().filter(|e| e.starts_with("start")).count(),
            4
        );
    }

    #[test]
    fn compressed_fixtures_and_the_stream_script_agree() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(&dir);
        let read = |name: &str| {
            ArchiveSource::from_reader(name, open_archive(&testdata(name)).unwrap())
                .read(&o, &mut |_| {})
                .unwrap()
        };
        let amd_gz = read("fd-amd64.tar.gz");
        let arm_zst = read("fd-arm64.tar.zst");
        let stream = ArchiveSource::from_command(
            StreamCommand::spawn("stream-arm64", &testdata("stream-arm64")).unwrap(),
        )
        .read(&o, &mut |_| {})
        .unwrap();
        assert_eq!(arm_zst.summary.architecture, "arm64");
        assert_eq!(stream.config_digest, arm_zst.config_digest);
        let ids = |i: &ArchiveImage| {
            i.layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&stream), ids(&arm_zst));
        // glibc and tzdata are shared between the arches, fd and the
        // customisation layer are not.
        let (a, b) = (ids(&amd_gz), ids(&arm_zst));
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(a[3], b[3]);
    }

    #[test]
    fn build_image_archives_are_hashed_not_trusted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        // The v1 IDs look like hints; the known map must not be consulted
        // with them to skip anything.
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut o = opts(&dir);
        o.known = Arc::new({
            let asked = asked.clone();
            move |d: &Digest| {
                asked.lock().unwrap().push(d.clone());
                None
            }
        });
        let image = ArchiveSource::from_reader(
            "hello",
            open_archive(&testdata("hello-buildimage.tar.gz")).unwrap(),
        )
        .read(&o, &mut |_| {})
        .unwrap();
        assert_eq!(image.layers.len(), 2);
        for l in &image.layers {
            assert_ne!(l.member, format!("{}/layer.tar", l.diff_id.hex()));
            check_blob(l);
        }
        // Small layers are looked up by their computed diff_id.
        let asked = asked.lock().unwrap();
        assert!(image.layers.iter().all(|l| asked.contains(&l.diff_id)));
    }

    #[test]
    fn manifest_first_and_docker_25_layouts_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let big = layer_tar(1, 1_500_000);
        let small = layer_tar(2, 3000);
        let config = config_for(&[&big, &small]);
        let cname = format!("blobs/sha256/{}", Digest::of(&config).hex());
        let bname = format!("blobs/sha256/{}", Digest::of(&big).hex());
        let sname = format!("blobs/sha256/{}", Digest::of(&small).hex());
        let bytes = archive(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
            ("manifest.json", &manifest(&cname, &[&bname, &sname])),
            (&bname, &big),
            (&sname, &small),
            (&cname, &config),
        ]);
        let image = read_with(&bytes, &opts(&dir)).result.unwrap();
        assert_eq!(check_blob(&image.layers[0]), big);
        assert_eq!(check_blob(&image.layers[1]), small);
        assert_eq!(image.summary.architecture, "arm64");
    }

    /// `docker save` from containerd's image store: layers kept gzip (or
    /// zstd) compressed, named by their compressed digest.
    #[test]
    fn compressed_layer_members_are_read_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..1_500_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let big = archive(&[("noise", &noise)]);
        let small = layer_tar(2, 3000);
        let third = layer_tar(4, 200_000);
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, data).unwrap();
            e.finish().unwrap()
        };
        let (big_gz, small_gz) = (gz(&big), gz(&small));
        let third_zst = zstd::encode_all(&third[..], 3).unwrap();
        assert!(big_gz.len() as u64 > SMALL_MEMBER, "streamed, not kept");
        let config = config_for(&[&big, &small, &third]);
        let blob = |b: &[u8]| format!("blobs/sha256/{}", Digest::of(b).hex());
        let (names, cname) = (
            [blob(&big_gz), blob(&small_gz), blob(&third_zst)],
            blob(&config),
        );
        let cited = manifest(&cname, &[&names[0], &names[1], &names[2]]);
        let bytes = archive(&[
            (&names[0], &big_gz),
            (&names[1], &small_gz),
            (&names[2], &third_zst),
            (&cname, &config),
            ("manifest.json", &cited),
        ]);
        let run = read_with(&bytes, &opts(&dir));
        // The uncompressed size is not known while the member streams.
        let started = format!("start {} 0", names[0]);
        assert!(run.events.contains(&started), "{:?}", run.events);
        let image = run.result.unwrap();
        assert_eq!(check_blob(&image.layers[0]), big);
        assert_eq!(check_blob(&image.layers[1]), small);
        assert_eq!(check_blob(&image.layers[2]), third);

        // The same layers, uncompressed, give the same blobs.
        let plain = archive(&[
            ("1.tar", &big),
            ("2.tar", &small),
            ("3.tar", &third),
            ("c.json", &config),
            (
                "manifest.json",
                &manifest("c.json", &["1.tar", "2.tar", "3.tar"]),
            ),
        ]);
        let plain = read_with(&plain, &opts(&dir)).result.unwrap();
        for (compressed, plain) in image.layers.iter().zip(&plain.layers) {
            match (&compressed.blob, &plain.blob) {
                (LayerBlob::Spooled { encoded: a, .. }, LayerBlob::Spooled { encoded: b, .. }) => {
                    assert_eq!(a.digest, b.digest)
                }
                _ => panic!("not spooled"),
            }
        }

        // A layer the destination has is found by its diff_id, not its name.
        let (o, _) = opts_knowing(&dir, &small);
        let run = read_with(&bytes, &o);
        assert!(
            run.events.contains(&format!("skip {}", names[1])),
            "{:?}",
            run.events
        );
        assert!(matches!(
            run.result.unwrap().layers[1].blob,
            LayerBlob::Known { .. }
        ));

        // A corrupt compressed layer is an error that names it.
        let mut corrupt = big_gz.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0xff;
        let bytes = archive(&[
            (&names[0], &corrupt),
            (&cname, &config),
            ("manifest.json", &cited),
        ]);
        match err(read_with(&bytes, &opts(&dir))) {
            InputError::Member { member, .. } => assert_eq!(member, names[0]),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_layer_cited_twice_is_encoded_once() {
        let dir = tempfile::tempdir().unwrap();
        let small = layer_tar(3, 5000);
        let config = config_for(&[&small, &small]);
        let bytes = archive(&[
            ("a/layer.tar", &small),
            ("c.json", &config),
            (
                "manifest.json",
                &manifest("c.json", &["a/layer.tar", "./a/layer.tar"]),
            ),
        ]);
        let run = read_with(&bytes, &opts(&dir));
        assert_eq!(
            run.events.iter().filter(|e| e.starts_with("start")).count(),
            1
        );
        let image = run.result.unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.layers[0].diff_id, image.layers[1].diff_id);
    }

    #[test]
    fn symlinked_layers_from_old_docker_save_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer_tar(4, 2000);
        let config = config_for(&[&l, &l]);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(l.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, "aaa/layer.tar", &l[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
            .unwrap();
        for (name, data) in [
            ("c.json", config),
            (
                "manifest.json",
                manifest("c.json", &["aaa/layer.tar", "bbb/layer.tar"]),
            ),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let image = read_with(&b.into_inner().unwrap(), &opts(&dir))
            .result
            .unwrap();
        assert_eq!(image.layers[1].member, "bbb/layer.tar");
        check_blob(&image.layers[1]);
    }

    /// An archive of one layer of about `size` bytes, named after its
    /// diff_id as streamLayeredImage names layers: the layer, its member
    /// name, the archive.
    fn one_hinted_layer(size: usize) -> (Vec<u8>, String, Vec<u8>) {
        let layer = layer_tar(5, size);
        let config = config_for(&[&layer]);
        let name = format!("{}/layer.tar", Digest::of(&layer).hex());
        let bytes = archive(&[
            (&name, &layer),
            ("c.json", &config),
            ("manifest.json", &manifest("c.json", &[&name])),
        ]);
        (layer, name, bytes)
    }

    #[test]
    fn known_layers_are_only_hashed_when_the_hint_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (big, name, bytes) = one_hinted_layer(1_200_000);
        let (o, present) = opts_knowing(&dir, &big);
        let run = read_with(&bytes, &o);
        assert_eq!(run.events, vec![format!("skip {name}")]);
        match &run.result.unwrap().layers[0].blob {
            LayerBlob::Known { descriptor } => assert_eq!(*descriptor, present),
            LayerBlob::Spooled { .. } => panic!("a known layer was encoded"),
        }

        // The same name on other bytes: the hint lies, and it is an error.
        let other = layer_tar(6, 1_200_000);
        let bytes = archive(&[(&name, &other)]);
        match err(read_with(&bytes, &o)) {
            InputError::HintMismatch {
                member,
                hint,
                actual,
                ..
            } => {
                assert_eq!(member, name);
                assert_eq!(hint, Digest::of(&big));
                assert_eq!(actual, Digest::of(&other));
            }
            e => panic!("{e:?}"),
        }
    }

    /// A map that is not ready the first `n` times it is asked, then is:
    /// the registry reads come back while the reader is at its `n`th
    /// question (`usize::MAX`: never, while the archive is read).
    struct ReadyAfter {
        n: usize,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl MapReadiness for ReadyAfter {
        fn is_ready(&self) -> bool {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.n
        }
        fn wait(&self) -> bool {
            true
        }
        fn may_speculate(&self) -> bool {
            true
        }
    }

    fn ready_after(n: usize) -> Arc<dyn MapReadiness> {
        Arc::new(ReadyAfter {
            n,
            asked: Default::default(),
        })
    }

    #[test]
    fn a_layer_met_before_the_map_is_in_is_compressed_until_the_map_answers() {
        let dir = tempfile::tempdir().unwrap();
        // Three 1 MiB reads: the answer comes in at the second.
        let (big, name, bytes) = one_hinted_layer(3_000_000);

        // Known: compression stops, the rest is hashed, nothing is announced.
        let (mut o, present) = opts_knowing(&dir, &big);
        o.readiness = ready_after(2);
        let run = read_with(&bytes, &o);
        assert_eq!(run.events, vec![format!("skip {name}")]);
        match &run.result.unwrap().layers[0].blob {
            LayerBlob::Known { descriptor } => assert_eq!(*descriptor, present),
            LayerBlob::Spooled { .. } => panic!("a known layer was kept encoded"),
        }

        // Not known: announced once the answer is in, with the bytes read
        // so far, and the blob is the one a reader that never waited makes.
        let mut o = opts(&dir);
        o.readiness = ready_after(2);
        let run = read_with(&bytes, &o);
        let size = big.len();
        assert_eq!(
            run.events,
            vec![
                format!("start {name} {size}"),
                "progress".into(),
                format!("finish {name}")
            ]
        );
        let blob_digest = |run: Run| {
            let layer = &run.result.unwrap().layers[0];
            assert_eq!(check_blob(layer), big);
            match &layer.blob {
                LayerBlob::Spooled { encoded, .. } => encoded.digest.clone(),
                LayerBlob::Known { .. } => panic!("not encoded"),
            }
        };
        assert_eq!(
            blob_digest(run),
            blob_digest(read_with(&bytes, &opts(&dir)))
        );

        // Known by a name that lies: compression stopped, so the lie is an
        // error, as without speculation.
        let other = layer_tar(6, 3_000_000);
        let (mut o, _) = opts_knowing(&dir, &big);
        o.readiness = ready_after(2);
        match err(read_with(&archive(&[(&name, &other)]), &o)) {
            InputError::HintMismatch { hint, actual, .. } => {
                assert_eq!(hint, Digest::of(&big));
                assert_eq!(actual, Digest::of(&other));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn layers_that_end_before_the_map_is_in_are_settled_in_order_once_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, other) = (
            layer_tar(1, 1_200_000),
            layer_tar(2, 1_200_000),
            layer_tar(3, 1_200_000),
        );
        let a_name = format!("{}/layer.tar", Digest::of(&a).hex());
        let b_name = format!("{}/layer.tar", Digest::of(&b).hex());
        // Named as if it were `a`: not `a`, so its own blob is uploaded
        // (it was compressed whole, nothing is lost).
        let liar = format!("{}.tar", Digest::of(&a).hex());
        let config = config_for(&[&a, &b, &other]);
        let bytes = archive(&[
            (&a_name, &a),
            (&b_name, &b),
            (&liar, &other),
            ("c.json", &config),
            (
                "manifest.json",
                &manifest("c.json", &[&a_name, &b_name, &liar]),
            ),
        ]);
        let (mut o, present) = opts_knowing(&dir, &a);
        // The reads are still out when the archive ends.
        o.readiness = ready_after(usize::MAX);
        let run = read_with(&bytes, &o);
        assert_eq!(
            run.events,
            vec![
                format!("skip {a_name}"),
                format!("start {b_name} {}", b.len()),
                "progress".into(),
                format!("finish {b_name}"),
                format!("start {liar} {}", other.len()),
                "progress".into(),
                format!("finish {liar}"),
            ]
        );
        let image = run.result.unwrap();
        match &image.layers[0].blob {
            LayerBlob::Known { descriptor } => assert_eq!(*descriptor, present),
            LayerBlob::Spooled { .. } => panic!("a known layer was kept encoded"),
        }
        assert_eq!(check_blob(&image.layers[1]), b);
        assert_eq!(check_blob(&image.layers[2]), other);
    }

    #[test]
    fn a_diff_id_mismatch_names_the_member_and_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        for size in [2000, 1_100_000] {
            let l = layer_tar(7, size);
            let other = layer_tar(8, 100);
            let config = config_for(&[&other]);
            let bytes = archive(&[
                ("x/layer.tar", &l),
                ("c.json", &config),
                ("manifest.json", &manifest("c.json", &["x/layer.tar"])),
            ]);
            let e = err(read_with(&bytes, &opts(&dir)));
            let msg = e.to_string();
            assert!(msg.contains("`x/layer.tar`"), "{msg}");
            assert!(msg.contains(&Digest::of(&other).to_string()), "{msg}");
            assert!(msg.contains(&Digest::of(&l).to_string()), "{msg}");
        }
    }

    #[test]
    fn broken_archives_are_errors_naming_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(&dir);
        let l = layer_tar(9, 1_300_000);
        let config = config_for(&[&l]);
        let good = archive(&[
            ("l/layer.tar", &l),
            ("c.json", &config),
            ("manifest.json", &manifest("c.json", &["l/layer.tar"])),
        ]);
        assert!(read_with(&good, &o).result.is_ok());

        let expect = |bytes: &[u8], what: &str| {
            let e = err(read_with(bytes, &o));
            let msg = format!(
                "{e}: {:?}",
                std::error::Error::source(&e).map(|s| s.to_string())
            );
            assert!(msg.contains("`test.tar`"), "{msg}");
            assert!(msg.contains(what), "expected `{what}` in: {msg}");
        };
        // Cut inside the big layer, inside the manifest, and before the end blocks.
        expect(&good[..700_000], "truncated");
        let manifest_end = good.len() - 1024 - 512 + 10;
        expect(&good[..manifest_end], "truncated");
        expect(&good[..good.len() - 1024], "truncated");
        expect(b"", "empty");
        expect(&[0x55; 4096], "not a valid tar");
        expect(&archive(&[("c.json", &config)]), "no `manifest.json`");
        expect(
            &archive(&[("oci-layout", b"{}"), ("index.json", b"{}")]),
            "hint: name its kind, as in `oci-archive:PATH`",
        );
        expect(
            &archive(&[("manifest.json", b"{not json")]),
            "`manifest.json` in `test.tar` is not valid",
        );
        let two = serde_json::to_vec(&serde_json::json!([
            {"Config": "c.json", "Layers": []}, {"Config": "c.json", "Layers": []}
        ]))
        .unwrap();
        expect(&archive(&[("manifest.json", &two)]), "lists 2 images");
        expect(
            &archive(&[("manifest.json", &manifest("c.json", &[]))]),
            "no member `c.json`",
        );
        expect(
            &archive(&[
                ("c.json", &config),
                ("manifest.json", &manifest("c.json", &["gone/layer.tar"])),
            ]),
            "no member `gone/layer.tar`",
        );
        expect(
            &archive(&[
                ("c.json", b"[1,2]"),
                ("manifest.json", &manifest("c.json", &[])),
            ]),
            "not a valid image config",
        );
        expect(
            &archive(&[
                ("c.json", &config),
                ("manifest.json", &manifest("c.json", &[])),
            ]),
            "lists 1 diff_ids but `manifest.json` lists 0 layers",
        );
    }

    #[test]
    fn a_failed_stream_reports_the_process_not_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stream-bad");
        // Half an archive, then a failure.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nhead -c 600000 {}\necho 'building layer 3 failed' >&2\nexit 1\n",
                testdata("fd-amd64.tar").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = ArchiveSource::from_command(StreamCommand::spawn("stream-bad", &script).unwrap());
        let e = src.read(&opts(&dir), &mut |_| {}).err().unwrap();
        let msg = e.to_string();
        assert!(matches!(e, InputError::Exited { .. }), "{msg}");
        assert!(msg.contains("building layer 3 failed"), "{msg}");
    }

    #[test]
    fn past_the_budget_small_layers_stream_and_json_is_still_kept() {
        let dir = tempfile::tempdir().unwrap();
        let small = layer_tar(10, 4000);
        let config = config_for(&[&small]);
        let bytes = archive(&[
            ("s/layer.tar", &small),
            ("c.json", &config),
            ("manifest.json", &manifest("c.json", &["s/layer.tar"])),
        ]);
        let mut events = Vec::new();
        let image = read_with_budget(
            "t",
            &mut &bytes[..],
            &opts(&dir),
            &Selection::default(),
            &mut |e| {
                if let ReadEvent::LayerStarted { member, .. } = e {
                    events.push(member)
                }
            },
            0,
        )
        .unwrap();
        assert_eq!(events, vec!["s/layer.tar".to_owned()]);
        check_blob(&image.layers[0]);
    }

    /// A POSIX extended header giving `path`, as Python's tarfile writes
    /// for names over 100 bytes.
    fn pax_member(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            format!("{len}{body}")
        };
        let records = record("path", path);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeaders.0/x").unwrap();
        h.set_size(records.len() as u64);
        h.set_cksum();
        b.append(&h, records.as_bytes()).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("truncated-name").unwrap();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn pax_long_member_names_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let big = layer_tar(11, 1_100_000);
        let config = config_for(&[&big]);
        let long = format!("{}/layer.tar", "base-image-layer-".repeat(8));
        let mut b = tar::Builder::new(Vec::new());
        pax_member(&mut b, &long, &big);
        pax_member(&mut b, "c.json", &config);
        pax_member(&mut b, "manifest.json", &manifest("c.json", &[&long]));
        let image = read_with(&b.into_inner().unwrap(), &opts(&dir))
            .result
            .unwrap();
        assert_eq!(image.layers[0].member, long);
        check_blob(&image.layers[0]);
    }

    #[test]
    fn every_cut_and_a_flipped_byte_give_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let o = ReadOptions::new(Compression::None, dir.path());
        let good = std::fs::read(testdata("fd-amd64.tar")).unwrap();
        // Python pads the stream to 10240 bytes: past the two zero blocks
        // after the last member, a cut is harmless.
        let last = good.iter().rposition(|b| *b != 0).unwrap();
        let end = (last + 1).div_ceil(512) * 512 + 1024;
        assert!(end < good.len());
        assert!(read_with(&good[..end], &o).result.is_ok());
        // Cuts at header, data and padding offsets all over the archive.
        let cuts = (1..24).map(|i| (end * i / 24 + i * 37 % 512).min(end - 1));
        for cut in cuts.chain([1, 511, 512, 513, end - 512, end - 1]) {
            let e = err(read_with(&good[..cut], &o));
            assert!(
                matches!(e, InputError::Truncated { .. } | InputError::Member { .. }),
                "cut at {cut}: {e:?}"
            );
        }
        // A flipped byte inside the first layer's data: its hash changes.
        let mut bad = good.clone();
        bad[512 + 100_000] ^= 0x20;
        match err(read_with(&bad, &o)) {
            InputError::DiffIdMismatch { member, .. } => assert!(member.ends_with("/layer.tar")),
            e => panic!("{e:?}"),
        }
        // A flipped byte in a header: its checksum fails.
        let mut bad = good;
        bad[10] ^= 0x01;
        assert!(matches!(err(read_with(&bad, &o)), InputError::Tar { .. }));
    }

    /// Two images sharing a layer, each with one of its own, all large
    /// enough to stream; tagged `a:1` and `ghcr.io/b/b:2`.
    fn two_image_archive() -> (Vec<u8>, [Vec<u8>; 3]) {
        let size = SMALL_MEMBER as usize + 1000;
        let (shared, only_a, only_b) = (layer_tar(1, size), layer_tar(2, size), layer_tar(3, size));
        let config_a = config_for(&[&shared, &only_a]);
        let config_b = config_for(&[&shared, &only_b]);
        let list = serde_json::to_vec(&serde_json::json!([
            {"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["s/layer.tar", "a/layer.tar"]},
            {"Config": "b.json", "RepoTags": ["ghcr.io/b/b:2"], "Layers": ["s/layer.tar", "b/layer.tar"]},
        ]))
        .unwrap();
        let bytes = archive(&[
            ("s/layer.tar", &shared),
            ("a/layer.tar", &only_a),
            ("b/layer.tar", &only_b),
            ("a.json", &config_a),
            ("b.json", &config_b),
            ("manifest.json", &list),
        ]);
        (bytes, [shared, only_a, only_b])
    }

    fn started(run: &Run) -> Vec<&str> {
        run.events
            .iter()
            .filter_map(|e| e.strip_prefix("start "))
            .map(|e| e.split(' ').next().unwrap())
            .collect()
    }

    fn read_choosing(bytes: &[u8], opts: &ReadOptions, selection: &Selection) -> Run {
        let mut events = Vec::new();
        let result = read_selected("two.tar", &mut &bytes[..], opts, selection, &mut |e| {
            if let ReadEvent::LayerStarted { member, .. } = e {
                events.push(format!("start {member}"));
            }
        });
        Run { result, events }
    }

    #[test]
    fn one_image_of_several_is_chosen_by_tag_or_position() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, [shared, only_a, only_b]) = two_image_archive();
        let diff_ids = |run: Run| -> Vec<Digest> {
            run.result
                .unwrap()
                .layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect()
        };
        let count = err(read_with(&bytes, &opts(&dir)));
        assert!(
            count
                .to_string()
                .contains("lists 2 images (@0 `a:1`; @1 `ghcr.io/b/b:2`)"),
            "{count}"
        );
        assert!(count.to_string().contains("`archive:PATH:@N`"), "{count}");
        // Read from a stream, a choice is settled at the end: every layer was
        // encoded on the way.
        for (choice, top) in [
            (ImageChoice::Reference("a:1".into()), &only_a),
            (
                ImageChoice::Reference("docker.io/library/a:1".into()),
                &only_a,
            ),
            (ImageChoice::Index(1), &only_b),
            (ImageChoice::parse("ghcr.io/b/b:2"), &only_b),
        ] {
            let selection = Selection {
                choice: choice.clone(),
                layers: None,
            };
            let run = read_choosing(&bytes, &opts(&dir), &selection);
            assert_eq!(started(&run).len(), 3, "{choice:?}");
            assert_eq!(
                diff_ids(run),
                [Digest::of(&shared), Digest::of(top)],
                "{choice:?}"
            );
        }
        let selection = Selection {
            choice: ImageChoice::parse("@2"),
            layers: None,
        };
        let err = err(read_choosing(&bytes, &opts(&dir), &selection));
        assert!(
            err.to_string()
                .contains("`two.tar` has no image `@2` (it has @0 `a:1`; @1 `ghcr.io/b/b:2`)"),
            "{err}"
        );
    }

    #[test]
    fn a_plain_file_is_looked_into_first_so_other_images_are_not_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, [shared, _, only_b]) = two_image_archive();
        let path = dir.path().join("two.tar");
        std::fs::write(&path, &bytes).unwrap();
        let selection = Selection::prepare("two.tar", &path, ImageChoice::Index(1)).unwrap();
        let run = read_choosing(&bytes, &opts(&dir), &selection);
        assert_eq!(started(&run), ["s/layer.tar", "b/layer.tar"]);
        let image = run.result.unwrap();
        assert_eq!(image.repo_tags, ["ghcr.io/b/b:2"]);
        assert_eq!(image.layers[0].diff_id, Digest::of(&shared));
        assert_eq!(image.layers[1].diff_id, Digest::of(&only_b));
        // A choice the archive lacks fails before any reading.
        let err = Selection::prepare("two.tar", &path, ImageChoice::parse("c:3")).unwrap_err();
        assert!(matches!(err, InputError::NoSuchImage { .. }), "{err}");
        // Without a choice, several images are refused at once too; one
        // image is looked into the same way; a file the reader will refuse
        // is left to it.
        let err = Selection::prepare("two.tar", &path, ImageChoice::Only).unwrap_err();
        assert!(
            matches!(err, InputError::ImageCount { count: 2, .. }),
            "{err}"
        );
        let one = testdata("fd-amd64.tar");
        let selection = Selection::prepare("one.tar", &one, ImageChoice::Only).unwrap();
        assert_eq!(selection.layers.map(|l| l.len()), Some(4));
        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let selection = Selection::prepare("cut.tar", &cut, ImageChoice::Only).unwrap();
        assert!(selection.layers.is_none());
        // Compressed, it is settled at the end.
        let gz = dir.path().join("two.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let selection = Selection::prepare("two.tar.gz", &gz, ImageChoice::parse("c:3")).unwrap();
        assert!(selection.layers.is_none());
    }

    #[test]
    fn archive_inputs_split_off_an_image_choice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a:b.tar");
        std::fs::write(&file, b"x").unwrap();
        let text = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", file.display()));
        assert_eq!(
            crate::input::split_image_choice(&file),
            (file.clone(), ImageChoice::Only)
        );
        assert_eq!(
            crate::input::split_image_choice(&text(":fd:1.0")),
            (file.clone(), ImageChoice::Reference("fd:1.0".into()))
        );
        assert_eq!(
            crate::input::split_image_choice(&text(":@3")),
            (file.clone(), ImageChoice::Index(3))
        );
        let missing = dir.path().join("missing.tar:fd");
        assert_eq!(
            crate::input::split_image_choice(&missing),
            (missing.clone(), ImageChoice::Only)
        );
    }

    #[test]
    fn hints() {
        let d = Digest::of(b"x");
        assert_eq!(hint_of(&format!("{}/layer.tar", d.hex())), Some(d.clone()));
        assert_eq!(
            hint_of(&format!("blobs/sha256/{}", d.hex())),
            Some(d.clone())
        );
        assert_eq!(hint_of(&format!("{}.tar", d.hex())), Some(d.clone()));
        assert_eq!(hint_of(&format!("x/{}.tar", d.hex())), None);
        assert_eq!(hint_of("layer.tar"), None);
        assert_eq!(hint_of("abc/layer.tar"), None);
        assert_eq!(hint_of("c.json"), None);
    }
}

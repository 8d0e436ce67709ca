//! Inputs: what the user names on the command line, what it turns out to be,
//! and the one pass that reads it.
//!
//! An input is written `[PLATFORM=][KIND:]PATH` ([`InputSpec`]). Its kind is
//! given or detected by content ([`detect()`]); a docker-archive file (plain,
//! gzip or zstd) or a `streamLayeredImage` script ([`command`]) is opened
//! ([`open`]) into a plain `Read` that [`docker_archive`] consumes once,
//! handing each layer to [`crate::layer`] as it streams by. This module knows
//! nothing of registries, tags or platforms beyond parsing them: the platform
//! is carried for `publish` to reconcile with the image config.

pub mod command;
pub mod detect;
pub mod docker_archive;
pub mod nix2container;
pub mod oci_archive;
pub mod pipe;
mod read_ahead;
pub mod tar_index;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::oci::Platform;

pub use command::{StreamCommand, StreamOptions};
pub use detect::{detect, ArchiveCompression, Detected};
pub use docker_archive::{
    read_docker_archive, read_selected, ArchiveImage, ArchiveLayer, ImageChoice, KnownLayers,
    LayerBlob, MapReadiness, ReadEvent, ReadOptions, ReadyAtOnce, Selection,
};

/// Everything that can go wrong between naming an input and holding its image.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("`{text}` is not an input: {reason}\nhint: inputs are written `[PLATFORM=][KIND:]PATH`, KIND being `stream`, `archive`, `nix2container`, `oci`, `oci-archive` or `docker://REF`")]
    BadSpec { text: String, reason: String },

    #[error("cannot open input `{input}`{}", not_a_platform_hint(.input, .source))]
    Open {
        input: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot tell what kind of input `{input}` is: {found}\nhint: inputs are docker-archives (`.tar`, `.tar.gz`, `.tar.zst`), `streamLayeredImage` scripts, nix2container JSON files or OCI layout directories; name the kind with `archive:`, `stream:`, `nix2container:` or `oci:`")]
    Unrecognized { input: String, found: String },

    #[error("{kind} inputs are not supported yet (`{input}`)")]
    Unsupported { input: String, kind: &'static str },

    #[error("cannot read `{input}`")]
    Read {
        input: String,
        #[source]
        source: io::Error,
    },

    #[error("`{input}` is empty")]
    Empty { input: String },

    #[error("`{input}` is not a valid tar archive")]
    Tar {
        input: String,
        #[source]
        source: io::Error,
    },

    #[error("`{input}` ends without the end-of-archive blocks: it is truncated")]
    Truncated { input: String },

    #[error("cannot read member `{member}` of `{input}`")]
    Member {
        input: String,
        member: String,
        #[source]
        source: io::Error,
    },

    #[error("member `{member}` of `{input}` is {size} bytes of JSON, more than the {limit} bytes allowed for image metadata")]
    MemberTooLarge {
        input: String,
        member: String,
        size: u64,
        limit: u64,
    },

    #[error("`{input}` has no `manifest.json`: it is not a docker-archive")]
    NoManifest { input: String },

    #[error("`{input}` is an OCI image layout archive without `manifest.json`, not a docker-archive\nhint: name its kind, as in `oci-archive:PATH`")]
    OciArchive { input: String },

    #[error("`{input}` has no `{missing}`: it is not an OCI image layout archive")]
    NotAnOciArchive {
        input: String,
        missing: &'static str,
    },

    #[error("`manifest.json` in `{input}` is not valid")]
    BadManifest {
        input: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("`manifest.json` in `{input}` lists {count} images ({images}), manifold reads one per input\nhint: pick one by a tag or position, as in `archive:PATH:REF` or `archive:PATH:@N`")]
    ImageCount {
        input: String,
        count: usize,
        images: String,
    },

    #[error("`{input}` has no image `{wanted}` (it has {images})")]
    NoSuchImage {
        input: String,
        wanted: String,
        images: String,
    },

    #[error("`{input}` has no member `{member}`, which `manifest.json` names as {role}")]
    MissingMember {
        input: String,
        member: String,
        role: &'static str,
    },

    #[error("config `{member}` in `{input}` is not a valid image config")]
    BadConfig {
        input: String,
        member: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("config `{member}` in `{input}` lists {diff_ids} diff_ids but `manifest.json` lists {layers} layers")]
    LayerCount {
        input: String,
        member: String,
        diff_ids: usize,
        layers: usize,
    },

    #[error("layer `{member}` in `{input}` hashes to `{actual}` but the config expects diff_id `{expected}`")]
    DiffIdMismatch {
        input: String,
        member: String,
        expected: crate::digest::Digest,
        actual: crate::digest::Digest,
    },

    #[error("layer `{member}` in `{input}` hashes to `{actual}`, not `{hint}` as its name says, so it cannot be reused from the destination\nhint: the archive is inconsistent; rebuild it")]
    HintMismatch {
        input: String,
        member: String,
        hint: crate::digest::Digest,
        actual: crate::digest::Digest,
    },

    #[error("cannot create a spool file in `{}`", dir.display())]
    Spool {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot run stream `{input}`")]
    Spawn {
        input: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot run stream `{input}`: exec format error, it was built for another architecture\nhint: a `streamLayeredImage` script runs only on its own architecture (or with binfmt/qemu); for foreign architectures publish `buildLayeredImage` files or nix2container JSON instead")]
    ExecFormat { input: String },

    #[error("stream `{input}` failed ({status}){}", stderr_tail(.stderr))]
    Exited {
        input: String,
        status: String,
        stderr: Vec<String>,
    },

    #[error("stream `{input}` wrote nothing on stdout{}", stderr_tail(.stderr))]
    EmptyStream { input: String, stderr: Vec<String> },

    #[error("stream `{input}` did not finish within {}s and was killed", after.as_secs())]
    TimedOut { input: String, after: Duration },
}

/// For a missing `LEFT=PATH` whose LEFT was meant as a platform but is not
/// one (`linux/amd64/v3/x=./result`): the spec parser took the whole text as
/// a path, since a path may hold `=`; say why.
fn not_a_platform_hint(input: &str, error: &io::Error) -> String {
    let Some((left, _)) = input.split_once('=') else {
        return String::new();
    };
    if error.kind() != io::ErrorKind::NotFound || left.starts_with(['.', '/', '~']) {
        return String::new();
    }
    match left.parse::<Platform>() {
        Err(e) => format!("\nhint: {e}"),
        Ok(_) => String::new(),
    }
}

/// The last lines a failed command wrote on stderr, indented under the message.
fn stderr_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("; its last stderr lines:");
    for l in lines {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

/// What an input is, when the user says so.
impl InputError {
    /// Whether the command line itself was wrong (exit 2) rather than an
    /// input's content (exit 1).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            InputError::BadSpec { .. } | InputError::Unsupported { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// An executable writing a docker-archive on stdout (`streamLayeredImage`).
    Stream,
    /// A docker-archive file: plain, gzip or zstd.
    Archive,
    /// A nix2container `image.json`.
    Nix2Container,
    /// An OCI image layout directory.
    OciLayout,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// An image in a registry: `docker://REF`.
    Remote,
}

impl InputKind {
    fn describe(self) -> &'static str {
        match self {
            InputKind::Stream => "stream",
            InputKind::Archive => "docker-archive",
            InputKind::Nix2Container => "nix2container",
            InputKind::OciLayout => "OCI layout",
            InputKind::OciArchive => "OCI archive",
            InputKind::Remote => "`docker://`",
        }
    }
}

impl From<Detected> for InputKind {
    fn from(detected: Detected) -> InputKind {
        match detected {
            Detected::Archive { .. } => InputKind::Archive,
            Detected::Stream => InputKind::Stream,
            Detected::Nix2Container => InputKind::Nix2Container,
            Detected::OciLayout => InputKind::OciLayout,
            Detected::OciArchive => InputKind::OciArchive,
        }
    }
}

/// One positional input, `[PLATFORM=][KIND:]PATH`, parsed without touching
/// the file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// As given, for messages.
    pub text: String,
    pub platform: Option<Platform>,
    pub kind: Option<InputKind>,
    /// The path, or for [`InputKind::Remote`] the reference after `docker://`.
    pub path: PathBuf,
}

const KIND_PREFIXES: [(&str, InputKind); 5] = [
    ("stream:", InputKind::Stream),
    ("archive:", InputKind::Archive),
    ("nix2container:", InputKind::Nix2Container),
    ("oci:", InputKind::OciLayout),
    ("oci-archive:", InputKind::OciArchive),
];

impl FromStr for InputSpec {
    type Err = InputError;

    fn from_str(text: &str) -> Result<InputSpec, InputError> {
        let bad = |reason: &str| InputError::BadSpec {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        // Split at the first `=` only when its left side is a platform, so a
        // path holding `=` (`./a=b.tar`) stays a path.
        // A left side starting like a path (`./`, `/`, `~`) is one, although
        // `Platform::from_str` would take `./out` for os `.`, arch `out`.
        let (platform, rest) = match text.split_once('=') {
            Some((left, right)) if !left.starts_with(['.', '/', '~']) => {
                match left.parse::<Platform>() {
                    Ok(p) => (Some(p), right),
                    Err(_) => (None, text),
                }
            }
            _ => (None, text),
        };
        let (kind, path) = if let Some(reference) = rest.strip_prefix("docker://") {
            (Some(InputKind::Remote), reference)
        } else {
            match KIND_PREFIXES
                .iter()
                .find_map(|(p, k)| rest.strip_prefix(p).map(|path| (*k, path)))
            {
                Some((k, path)) => (Some(k), path),
                None => (None, rest),
            }
        };
        if path.is_empty() {
            return Err(bad(if kind == Some(InputKind::Remote) {
                "the image reference after `docker://` is empty"
            } else {
                "the path is empty"
            }));
        }
        Ok(InputSpec {
            text: text.to_owned(),
            platform,
            kind,
            path: PathBuf::from(path),
        })
    }
}

/// Splits `PATH[:SUFFIX]` where PATH must pass `exists`: the whole text
/// when it does, else the longest part before a `:` that does, and the rest
/// (which may hold `:` and `/` itself: `fd:1.0`, `localhost/fd:1.0`). skopeo
/// splits its `docker-archive:`, `oci:` and `oci-archive:` names at the first
/// `:`; here a path may hold `:` too.
pub fn split_existing_prefix(path: &Path, exists: fn(&Path) -> bool) -> (PathBuf, Option<String>) {
    if exists(path) {
        return (path.to_owned(), None);
    }
    let text = path.to_string_lossy();
    for (at, _) in text.rmatch_indices(':') {
        let (prefix, rest) = (&text[..at], &text[at + 1..]);
        if !rest.is_empty() && exists(Path::new(prefix)) {
            return (PathBuf::from(prefix), Some(rest.to_owned()));
        }
    }
    (path.to_owned(), None)
}

/// Splits `PATH[:REF]` or `PATH[:@N]` of an `archive:` input.
pub fn split_image_choice(path: &Path) -> (PathBuf, ImageChoice) {
    match split_existing_prefix(path, Path::is_file) {
        (file, Some(choice)) => (file, ImageChoice::parse(&choice)),
        (file, None) => (file, ImageChoice::Only),
    }
}

/// How much of an input is read at a time from disk.
const FILE_BUFFER: usize = 1 << 20;

/// Opens a docker-archive file for one sequential pass, decompressing gzip
/// (every member: pigz and `cat` write several) or zstd by content.
pub fn open_archive(path: &Path) -> Result<Box<dyn Read + Send>, InputError> {
    let input = path.display().to_string();
    let open_err = |source| InputError::Open {
        input: input.clone(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let mut buffered = BufReader::with_capacity(FILE_BUFFER, file);
    let head = fill_at_least(&mut buffered, 4).map_err(open_err)?;
    // A compressed archive is decoded on a thread of its own (see read_ahead).
    let decoded: Box<dyn Read + Send> = match ArchiveCompression::sniff(&head) {
        ArchiveCompression::Gzip => Box::new(crate::layer::gunzip::decoder(buffered)),
        ArchiveCompression::Zstd => {
            Box::new(zstd::Decoder::with_buffer(buffered).map_err(open_err)?)
        }
        ArchiveCompression::None => return Ok(Box::new(buffered)),
    };
    read_ahead::read_ahead(decoded).map_err(open_err)
}

/// The first `n` bytes of a buffered reader (fewer at end of file), without
/// consuming them.
fn fill_at_least(r: &mut BufReader<File>, n: usize) -> io::Result<Vec<u8>> {
    let buf = r.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

/// An input ready to be read.
pub enum OpenedInput {
    /// A docker-archive, from a file or a running stream script.
    DockerArchive(ArchiveSource),
    /// A nix2container `image.json`, read by its own module.
    Nix2Container { path: PathBuf },
}

/// A docker-archive byte stream and, for streams, the process behind it.
pub struct ArchiveSource {
    name: String,
    source: Source,
    /// Which image of the archive is read.
    selection: Selection,
    /// Set by the caller to abandon the read (the publish was cancelled).
    cancel: Option<Arc<AtomicBool>>,
}

enum Source {
    File(Box<dyn Read + Send>),
    Command(Box<StreamCommand>),
}

impl ArchiveSource {
    /// A file source, for callers that already hold a reader.
    pub fn from_reader(name: impl Into<String>, reader: Box<dyn Read + Send>) -> ArchiveSource {
        ArchiveSource {
            name: name.into(),
            source: Source::File(reader),
            selection: Selection::default(),
            cancel: None,
        }
    }

    /// A stream script's output.
    pub fn from_command(command: StreamCommand) -> ArchiveSource {
        ArchiveSource {
            name: command.name().to_owned(),
            source: Source::Command(Box::new(command)),
            selection: Selection::default(),
            cancel: None,
        }
    }

    /// Makes reads fail once `flag` is set, so an abandoned publish stops
    /// reading at once (a stream's process is killed when this is dropped).
    pub fn cancel_on(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// The input's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The uncompressed docker-archive bytes.
    pub fn reader(&mut self) -> &mut (dyn Read + Send) {
        match &mut self.source {
            Source::File(r) => r.as_mut(),
            Source::Command(c) => c.as_mut(),
        }
    }

    /// Ends the input: for a stream, waits for the process and turns a
    /// failure into an error. Call after reading everything.
    pub fn finish(self) -> Result<(), InputError> {
        match self.source {
            Source::File(_) => Ok(()),
            Source::Command(c) => c.finish(),
        }
    }

    /// Reads the whole archive in one pass ([`read_docker_archive`]), then
    /// finishes the input. When a stream's process failed, its exit status
    /// and stderr are the error, not the broken tar it left behind: after a
    /// read error the rest of a stream's output is read and discarded so the
    /// process can end on its own (instant when it died, as long as the
    /// stream otherwise).
    pub fn read(
        mut self,
        opts: &ReadOptions,
        on_event: &mut dyn FnMut(ReadEvent),
    ) -> Result<ArchiveImage, InputError> {
        let name = self.name.clone();
        let cancel = self.cancel.clone();
        let selection = std::mem::take(&mut self.selection);
        let result = match &cancel {
            Some(flag) => {
                let mut reader = Cancellable::new(self.reader(), flag);
                read_selected(&name, &mut reader, opts, &selection, on_event)
            }
            None => read_selected(&name, self.reader(), opts, &selection, on_event),
        };
        let cancelled = cancel.is_some_and(|f| f.load(Ordering::Relaxed));
        match (result, &mut self.source) {
            (Ok(image), _) => self.finish().map(|()| image),
            // Cancelled: dropping `self` kills the stream's process.
            (Err(e), _) if cancelled => Err(e),
            (Err(e), Source::Command(c)) => {
                // Let the process run to its end so its own failure, if any,
                // is what gets reported.
                c.drain();
                match self.finish() {
                    Err(process) => Err(process),
                    Ok(()) => Err(e),
                }
            }
            (Err(e), Source::File(_)) => Err(e),
        }
    }
}

/// A reader that fails once `cancel` is set, so an abandoned publish stops
/// reading at its next read.
pub struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<'a, R: Read> Cancellable<'a, R> {
    pub fn new(inner: R, cancel: &'a AtomicBool) -> Self {
        Cancellable { inner, cancel }
    }
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry on that.
            return Err(io::Error::other("publish cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Opens an input for reading: detects its kind unless given, opens and
/// decompresses archives, starts stream scripts (stderr to `tracing`, no
/// timeout).
pub fn open(spec: &InputSpec) -> Result<OpenedInput, InputError> {
    open_with(spec, StreamOptions::default())
}

/// [`open`], with options for a stream script (timeout, stderr sink).
pub fn open_with(spec: &InputSpec, stream: StreamOptions) -> Result<OpenedInput, InputError> {
    let input = spec.text.clone();
    let kind = match spec.kind {
        Some(k) => k,
        None => detect(&spec.path)?.into(),
    };
    match kind {
        InputKind::Archive => {
            let (path, choice) = split_image_choice(&spec.path);
            let selection = Selection::prepare(&input, &path, choice)?;
            let mut source = ArchiveSource::from_reader(input, open_archive(&path)?);
            source.selection = selection;
            Ok(OpenedInput::DockerArchive(source))
        }
        InputKind::Stream => Ok(OpenedInput::DockerArchive(ArchiveSource::from_command(
            StreamCommand::spawn_with(&input, &spec.path, stream)?,
        ))),
        InputKind::Nix2Container => Ok(OpenedInput::Nix2Container {
            path: spec.path.clone(),
        }),
        InputKind::OciLayout | InputKind::OciArchive | InputKind::Remote => {
            Err(InputError::Unsupported {
                input,
                kind: kind.describe(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    fn spec(s: &str) -> InputSpec {
        s.parse().unwrap()
    }

    #[test]
    fn spec_parses_platform_kind_and_path() {
        let s = spec("linux/arm64=stream:./result-arm");
        assert_eq!(s.platform.as_ref().unwrap().to_string(), "linux/arm64");
        assert_eq!(s.kind, Some(InputKind::Stream));
        assert_eq!(s.path, PathBuf::from("./result-arm"));
        assert_eq!(s.text, "linux/arm64=stream:./result-arm");

        let s = spec("armv7l-linux=fd.tar.gz");
        assert_eq!(s.platform.unwrap().to_string(), "linux/arm/v7");
        assert_eq!(s.kind, None);
        assert_eq!(s.path, PathBuf::from("fd.tar.gz"));

        let s = spec("nix2container:image.json");
        assert_eq!((s.platform, s.kind), (None, Some(InputKind::Nix2Container)));
        assert_eq!(spec("oci:dir").kind, Some(InputKind::OciLayout));
        assert_eq!(spec("archive:x").kind, Some(InputKind::Archive));

        let s = spec("linux/amd64=docker://ghcr.io/o/r:tag");
        assert_eq!(s.kind, Some(InputKind::Remote));
        assert_eq!(s.path, PathBuf::from("ghcr.io/o/r:tag"));
    }

    #[test]
    fn an_equals_sign_in_a_path_stays_in_the_path() {
        let s = spec("./out=1/result");
        assert_eq!((s.platform, s.kind), (None, None));
        assert_eq!(s.path, PathBuf::from("./out=1/result"));
        let s = spec("/abs/dir=x/f");
        assert_eq!((s.platform, s.path), (None, PathBuf::from("/abs/dir=x/f")));
        let s = spec("linux/amd64=a=b.tar");
        assert_eq!(s.path, PathBuf::from("a=b.tar"));
        let s = spec("not a platform=stream:x");
        assert_eq!(s.kind, None);
        assert_eq!(s.path, PathBuf::from("not a platform=stream:x"));
    }

    #[test]
    fn a_missing_input_with_a_bad_platform_says_so() {
        let missing = || io::Error::from(io::ErrorKind::NotFound);
        let err = InputError::Open {
            input: "linux/amd64/v3/x=./result".into(),
            source: missing(),
        };
        let text = err.to_string();
        assert!(text.starts_with("cannot open input `linux/amd64/v3/x=./result`\nhint: `linux/amd64/v3/x` is not a platform"), "{text}");
        for (input, source) in [
            ("./a=b", missing()),
            ("plain-path", missing()),
            ("a b=c", io::Error::from(io::ErrorKind::PermissionDenied)),
        ] {
            let err = InputError::Open {
                input: input.into(),
                source,
            };
            assert!(!err.to_string().contains("hint:"), "{err}");
        }
    }

    #[test]
    fn empty_paths_are_refused_with_the_text() {
        for bad in [
            "",
            "linux/amd64=",
            "stream:",
            "docker://",
            "x86_64-linux=oci:",
        ] {
            let err = bad.parse::<InputSpec>().unwrap_err();
            assert!(matches!(err, InputError::BadSpec { .. }), "{bad}");
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn open_archive_reads_every_compression_to_the_same_bytes() {
        let read = |name: &str| {
            let mut v = Vec::new();
            open_archive(&testdata(name))
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        };
        let plain = std::fs::read(testdata("fd-amd64.tar")).unwrap();
        // The gzip fixture has two members: a single-member decoder stops halfway.
        assert_eq!(read("fd-amd64.tar.gz"), plain);
        assert_eq!(read("fd-amd64.tar"), plain);
        let zst = read("fd-arm64.tar.zst");
        assert_eq!(&zst[257..262], b"ustar");
        assert_ne!(zst, plain);
    }

    #[test]
    fn open_refuses_what_is_not_wired_yet() {
        for s in ["oci:/nonexistent", "docker://example.com/a/b"] {
            let err = open(&spec(s)).err().unwrap();
            assert!(err.to_string().contains("not supported yet"), "{err}");
        }
        match open(&spec("nix2container:/x/image.json")).ok().unwrap() {
            OpenedInput::Nix2Container { path } => assert_eq!(path, Path::new("/x/image.json")),
            OpenedInput::DockerArchive(_) => panic!("wrong kind"),
        }
    }

    #[test]
    fn open_detects_and_reads_streams_and_archives() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ReadOptions::new(crate::layer::Compression::None, dir.path());
        let read = |text: String| match open(&spec(&text)).ok().unwrap() {
            OpenedInput::DockerArchive(src) => src.read(&opts, &mut |_| {}).unwrap(),
            OpenedInput::Nix2Container { .. } => panic!("wrong kind"),
        };
        let stream = read(format!(
            "aarch64-linux={}",
            testdata("stream-arm64").display()
        ));
        let file = read(format!(
            "archive:{}",
            testdata("fd-arm64.tar.zst").display()
        ));
        assert_eq!(stream.config_digest, file.config_digest);
        assert_eq!(stream.summary.architecture, "arm64");
        // With no compression the blob is the layer itself.
        for l in &stream.layers {
            match &l.blob {
                LayerBlob::Spooled { encoded, .. } => assert_eq!(encoded.digest, l.diff_id),
                LayerBlob::Known { .. } => panic!("nothing is known"),
            }
        }
    }

    #[test]
    fn what_crosses_threads_can() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<ArchiveSource>();
        send::<ArchiveImage>();
        send::<InputError>();
        send::<ReadOptions>();
        sync::<ReadOptions>();
        sync::<InputError>();
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = open(&spec("/nonexistent/fd.tar")).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/fd.tar"), "{err}");
    }
}

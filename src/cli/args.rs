//! The command line, as clap types. Doc comments are the help text: the first
//! line is `-h`, the rest is `--help`. Nothing here does I/O; `cli::run`
//! turns these values into a publish request.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Publish multi-architecture container images built by Nix";

const LONG_ABOUT: &str = "\
Publish multi-architecture container images built by Nix.

manifold takes one image per platform (nixpkgs streamLayeredImage scripts,
buildLayeredImage/buildImage archives, nix2container image.json files), reads
each in one pass, compresses and uploads the layers while they stream, pushes
an OCI image index by digest, and only then moves its tags.";

const TOP_EXAMPLES: &str = "\
Examples:
  manifold publish --repo ghcr.io/acme/fd --tag 1.0.0 ./result-amd64 ./result-arm64
  manifold publish --repo oci:./out --tag latest stream:./result
  manifold publish --repo ghcr.io/acme/fd --dry-run nix2container:./image.json
  manifold tags --version v1.2.3 --branch main
  manifold inspect ghcr.io/acme/fd:latest
  manifold completions bash > /etc/bash_completion.d/manifold

Environment: RUST_LOG sets the log filter; NO_COLOR turns colours off; in GitHub
Actions, GITHUB_* variables give the tags, annotations and outputs (see the README).";

const PUBLISH_EXAMPLES: &str = "\
Examples:
  # two architectures from Nix, to a registry
  manifold publish --repo ghcr.io/acme/fd --tag 1.0.0 ./result-amd64 ./fd-arm64.tar.gz

  # force the input kind and the platform (Nix configs never carry the arm variant)
  manifold publish --repo localhost:5000/fd linux/arm/v7=archive:./fd-armv7.tar.zst

  # no registry at all: an OCI image layout directory
  manifold publish --repo oci:./out --tag latest stream:./result

  # split runners: each pushes by digest, a final job assembles and tags
  manifold publish --repo ghcr.io/acme/fd --no-tags ./result          # on each runner
  manifold publish --repo ghcr.io/acme/fd --tag 1.0.0 --arch-tags \\
    docker://ghcr.io/acme/fd@sha256:… docker://ghcr.io/acme/fd@sha256:…

  # several images in one run (layers shared between them are uploaded once)
  manifold publish --config images.toml --tag 1.0.0

Inputs are `[PLATFORM=][KIND:]PATH`. KIND is detected from the content when
left out: `stream:` (an executable writing a docker-archive to stdout, nixpkgs
streamLayeredImage), `archive:` (a docker-archive, plain, .gz or .zst; of
several images pick one with `archive:PATH:REF` or `archive:PATH:@N`),
`nix2container:` (an image.json), `oci:` (an OCI layout directory),
`oci-archive:` (an OCI layout in a tar file) and `docker://REF` (an image
already in a registry). PLATFORM is `os/arch[/variant]`
or a Nix system such as `aarch64-linux`.";

// Option groups in `--help`, in the order a publish goes: where to, which
// tags, how layers are made, how registries are reached.
const DESTINATION: &str = "Destination options";
const TAGS: &str = "Tag options";
const LAYERS: &str = "Layer options";
const REGISTRY: &str = "Registry options";
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(name = "manifold", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = TOP_EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More detail on stderr (-v: debug, -vv: trace); RUST_LOG also works
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,

    /// Only errors on stderr
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish images as one multi-architecture index, then tag it
    #[command(after_long_help = PUBLISH_EXAMPLES)]
    Publish(PublishArgs),
    /// Print the tags that `publish` would push, one per line
    Tags(TagsArgs),
    /// Show what a reference points at: platforms, digests, sizes, annotations
    #[command(after_long_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
}

const INSPECT_EXAMPLES: &str = "\
Examples:
  manifold inspect ghcr.io/acme/fd:1.0.0
  manifold inspect localhost:5000/fd@sha256:… --tag latest --tag 1
  manifold inspect --json ghcr.io/acme/fd:latest
  manifold inspect oci:./out:latest";

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A registry reference, `host/repo:tag` or `host/repo@sha256:…`, or an
    /// OCI layout, `oci:DIR[:TAG]` or `oci-archive:PATH[:TAG]`
    #[arg(value_name = "REF")]
    pub reference: String,

    /// Also say whether this tag of the repository (a name of the layout)
    /// points at the same index (repeatable)
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    pub tags: Vec<String>,

    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Images to publish, one per platform: `[PLATFORM=][KIND:]PATH`
    #[arg(value_name = "INPUT", required_unless_present = "config")]
    pub inputs: Vec<String>,

    /// Destination: a registry repository (`ghcr.io/acme/fd`) or `oci:DIR`
    ///
    /// Repeat it to publish to several places; every destination gets the
    /// same index and the same tags. In GitHub Actions the default is
    /// `ghcr.io/<owner>/<repository>`, lower-cased.
    #[arg(long = "repo", value_name = "REPO", help_heading = DESTINATION)]
    pub repos: Vec<String>,

    /// Publish several images from a TOML file, one `[[image]]` table each
    /// (`repo`, `inputs`, optional `tags`, `annotations`, `platforms`)
    ///
    /// Paths in the file are relative to it; the other flags apply to every
    /// image. Layers shared between images are uploaded once per registry and
    /// mounted into the other repositories.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["inputs", "repos"], help_heading = DESTINATION)]
    pub config: Option<PathBuf>,

    /// Document format: OCI, or Docker v2s2 for old clients (gzip layers
    /// only; annotations cannot be written there and are dropped with a warning)
    #[arg(long, value_enum, default_value_t = FormatArg::Oci, help_heading = DESTINATION)]
    pub format: FormatArg,

    /// Read the inputs, resolve platforms, tags and annotations, ask the
    /// registries which blobs they have, and print the plan; write nothing
    #[arg(long, help_heading = DESTINATION)]
    pub dry_run: bool,

    /// Also write the result as JSON to this file
    #[arg(long, value_name = "PATH", help_heading = DESTINATION)]
    pub metadata_file: Option<PathBuf>,

    #[command(flatten)]
    pub tags: TagArgs,

    /// Also tag each per-architecture manifest `<tag>-<arch><variant>`
    /// (`1.0-amd64`, `1.0-armv7`), for registries whose clean-up deletes
    /// untagged manifests (ghcr.io)
    #[arg(long, help_heading = TAGS)]
    pub arch_tags: bool,

    /// Put annotations on the index only, or on the per-arch manifests too
    #[arg(long, value_enum, default_value_t = AnnotationLevel::Index, help_heading = TAGS)]
    pub annotation_level: AnnotationLevel,

    /// Layer compression
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip, help_heading = LAYERS)]
    pub compression: CompressionArg,

    /// Compression level (gzip 1–9, default 2; zstd 1–19, default 3)
    #[arg(long, value_name = "N", help_heading = LAYERS)]
    pub compression_level: Option<i32>,

    /// Reuse layers of this image besides those of the tags being published
    /// (repeatable)
    ///
    /// A tag or digest (`main`, `sha256:…`) is looked up in every destination;
    /// an image (`ghcr.io/acme/base:1.0`) in its own repository, whose layers
    /// are then mounted into destinations on the same registry instead of
    /// being compressed and uploaded.
    #[arg(long, value_name = "REF", help_heading = LAYERS)]
    pub cache_from: Vec<String>,

    /// Don't read or write the local layer cache ($XDG_CACHE_HOME/manifold)
    #[arg(long, help_heading = LAYERS)]
    pub no_cache: bool,

    /// Directory for the temp files that hold compressed layers (and a
    /// decompressed `oci-archive:`) [default: $TMPDIR]
    #[arg(long, value_name = "DIR", help_heading = LAYERS)]
    pub spool_dir: Option<PathBuf>,

    /// Kill a stream script that runs longer than this many seconds
    #[arg(long, value_name = "SECONDS", help_heading = LAYERS)]
    pub stream_timeout: Option<u64>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    /// Apply the never-backwards guard against this repository's tags
    #[arg(long = "repo", value_name = "REPO")]
    pub repo: Option<String>,

    /// Print a structured view: tags, version, annotations, and why each
    /// automatic tag was or was not given
    #[arg(long)]
    pub json: bool,

    // Flattened last: a flattened group's heading carries on to what follows.
    #[command(flatten)]
    pub tags: TagArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How tags and annotations are derived (see the README's tag rules).
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = TAGS)]
pub struct TagArgs {
    /// A tag to push, before the automatic ones (repeatable)
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    pub tags: Vec<String>,

    /// The version [env: VERSION; on a tag run, the tag name]
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,

    /// The branch [env: GITHUB_REF on branch runs]
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,

    /// The default branch [env: the GitHub event's repository.default_branch; else main]
    #[arg(long, value_name = "NAME")]
    pub default_branch: Option<String>,

    /// The revision [env: GITHUB_SHA; else `git rev-parse HEAD`]
    #[arg(long, value_name = "SHA")]
    pub revision: Option<String>,

    /// The source URL [env: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY]
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,

    /// The created time for the index annotation [env: SOURCE_DATE_EPOCH; else the commit time]
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,

    /// Automatic tags, comma-separated, from branch,pr,latest,version,minor,major,sha
    /// [default: branch,pr,latest,version,minor,major]
    #[arg(long, value_name = "LIST")]
    pub auto_tags: Option<String>,

    /// No automatic tags: only the `--tag`s
    #[arg(long, conflicts_with = "auto_tags")]
    pub no_auto_tags: bool,

    /// When `latest` moves
    #[arg(long, value_enum, default_value_t = LatestArg::Auto)]
    pub latest: LatestArg,

    /// Publish by digest only: no tags at all
    #[arg(long)]
    pub no_tags: bool,

    /// An index annotation `KEY=VALUE` (repeatable); `KEY=` deletes one
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,

    /// Hold back floating tags (X, X.Y, latest) that would go backwards
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub tag_guard: Switch,
}

/// How manifold talks to registries.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = REGISTRY)]
pub struct RegistryArgs {
    /// Registry user name; the password is read from stdin (--password-stdin)
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,

    /// Read the password or token for --username from stdin
    #[arg(long)]
    pub password_stdin: bool,

    /// Uploads at once per registry
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,

    /// Allow plain HTTP or unverified TLS for this registry host (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// Trust this CA certificate (PEM) besides the system's (repeatable)
    #[arg(long = "ca-file", value_name = "PATH")]
    pub ca_files: Vec<PathBuf>,

    /// Retries of a failed request or blob upload (connect errors, resets,
    /// timeouts, 408, 429, 5xx)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_retries: u32,

    /// Start no retry this many seconds after a request's first try
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub retry_timeout: u64,

    /// Upload blobs in PATCHes of this size (e.g. `4MiB`) instead of one
    /// streamed request [default: monolithic, chunked only when refused]
    #[arg(long, value_name = "BYTES", value_parser = crate::registry::upload::parse_byte_size)]
    pub chunk_size: Option<u64>,

    /// The first retry backoff in milliseconds (tests shorten it)
    #[arg(long, value_name = "MS", default_value_t = 250, hide = true)]
    pub retry_base_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Oci,
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LatestArg {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Switch {
    #[default]
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnnotationLevel {
    Index,
    #[value(name = "index,manifest")]
    IndexAndManifest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_takes_inputs_repos_and_tags() {
        let cli = Cli::try_parse_from([
            "manifold",
            "publish",
            "--repo",
            "oci:out",
            "--repo",
            "localhost:5000/a",
            "-t",
            "x",
            "--tag",
            "y",
            "linux/arm64=./a",
            "./b",
        ])
        .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        assert_eq!(p.inputs, ["linux/arm64=./a", "./b"]);
        assert_eq!(p.repos, ["oci:out", "localhost:5000/a"]);
        assert_eq!(p.tags.tags, ["x", "y"]);
        assert_eq!(p.compression, CompressionArg::Gzip);
    }

    #[test]
    fn usage_errors_are_caught_by_the_parser() {
        for args in [
            &["manifold", "publish", "--repo", "r"][..], // no input
            &[
                "manifold",
                "publish",
                "--repo",
                "r",
                "--username",
                "u",
                "./a",
            ], // no --password-stdin
            &[
                "manifold",
                "publish",
                "--repo",
                "r",
                "--compression",
                "lz4",
                "./a",
            ],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_batch_file_replaces_inputs_and_repos() {
        let cli = Cli::try_parse_from([
            "manifold",
            "publish",
            "--config",
            "images.toml",
            "--tag",
            "1",
            "--arch-tags",
        ])
        .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        assert_eq!(p.config, Some(PathBuf::from("images.toml")));
        assert!(p.inputs.is_empty());
        assert!(p.arch_tags);
        for args in [
            &["manifold", "publish", "--config", "f.toml", "./a"][..],
            &["manifold", "publish", "--config", "f.toml", "--repo", "r"][..],
            &["manifold", "publish"][..],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}

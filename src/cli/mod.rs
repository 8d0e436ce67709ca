//! The command-line front: turns parsed arguments into a publish request,
//! picks the progress reporter, prints results. The only module that knows
//! clap and terminals.

pub mod args;
pub mod inspect;
mod outputs;
pub mod progress;

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::env::{self, Env};
use crate::input::InputSpec;
use crate::layer::Compression;
use crate::layout::Layout;
use crate::progress::{Reporter, Tally};
use crate::publish::{self, Destination, ImageOptions, PublishedImage, TagSet};
use crate::reference::{Registry, Repository};
use crate::registry::{self, ClientOptions, RegistryClient};
use crate::tags::{self, GitInfo, SystemGit, TagOptions, TagPlan};

use args::{
    AnnotationLevel, Cli, Command, CompressionArg, FormatArg, LatestArg, PublishArgs, RegistryArgs,
    Switch, TagArgs, TagsArgs,
};

/// A usage error: the command line or an input was refused (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let env = Env::from_process();
    let reporter: Arc<dyn Reporter> = if cli.quiet {
        Arc::new(progress::Quiet)
    } else if std::io::stderr().is_terminal() && cli.verbose == 0 && env.get(env::CI).is_none() {
        Arc::new(progress::Bars::new())
    } else {
        Arc::new(progress::Lines::new())
    };
    let screen = reporter.clone();
    let work = async {
        match cli.command {
            Command::Publish(args) => run_publish(args, &env, reporter).await,
            Command::Tags(args) => run_tags(args, &env).await,
            Command::Inspect(args) => inspect::run(args, &env).await,
            Command::Completions(args) => {
                use clap::CommandFactory;
                let mut command = Cli::command();
                // Into a buffer first: clap_complete panics on a closed pipe.
                let mut script = Vec::new();
                clap_complete::generate(args.shell, &mut command, "manifold", &mut script);
                std::io::stdout().lock().write_all(&script)?;
                Ok(())
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        signal = interrupted() => {
            // Dropping `work` aborts uploads and fails the readers; the
            // stream scripts are killed here because a reader blocked on a
            // silent script would not notice.
            crate::input::command::kill_all_running();
            Err(Interrupted(signal).into())
        }
    };
    // Bars off the screen before the error (or nothing) is printed.
    screen.finish();
    result
}

/// The run was stopped by a signal (exit 130 for SIGINT, 143 for SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {0}: stopped before finishing; tags are moved only after every blob and manifest is in place")]
pub struct Interrupted(&'static str);

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Sets up `tracing` on stderr: `RUST_LOG` wins, else `-v`/`-vv`, else warnings.
pub fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "manifold=debug",
        (false, _) => "manifold=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os(env::NO_COLOR).is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The message for an error: its chain, once, with `hint:` lines last. Each
/// cause after the first starts a `caused by:` line; further lines of one
/// message (a stream's stderr tail) stay indented under it.
pub fn render_error(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut hints: Vec<&str> = Vec::new();
    let texts: Vec<String> = error.chain().map(|cause| cause.to_string()).collect();
    for text in &texts {
        let mut first_of_cause = true;
        for line in text.lines() {
            if line.starts_with("hint:") {
                if !hints.contains(&line) {
                    hints.push(line);
                }
                continue;
            }
            // Context messages often repeat their source's text: say it once.
            if kept.iter().any(|l| l.contains(line)) {
                continue;
            }
            if !out.is_empty() {
                out.push_str(if first_of_cause {
                    "\n  caused by: "
                } else if line.starts_with(char::is_whitespace) {
                    "\n"
                } else {
                    "\n  "
                });
            }
            out.push_str(line);
            kept.push(line);
            first_of_cause = false;
        }
    }
    for hint in hints {
        out.push('\n');
        out.push_str(hint);
    }
    out
}

/// 2 for usage errors and refused input, 130/143 when interrupted, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(Interrupted(signal)) = error.downcast_ref::<Interrupted>() {
        return if *signal == "SIGTERM" { 143 } else { 130 };
    }
    let usage = error.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause.is::<publish::DuplicatePlatform>()
            || cause
                .downcast_ref::<tags::TagError>()
                .is_some_and(|e| e.is_usage_error())
            || cause
                .downcast_ref::<crate::input::InputError>()
                .is_some_and(|e| e.is_usage_error())
    });
    if usage {
        2
    } else {
        1
    }
}

/// A closed stdout (`manifold tags | head -1`) is not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn tag_options(args: &TagArgs) -> Result<TagOptions> {
    let auto_tags = if args.no_auto_tags {
        Some(Vec::new())
    } else {
        match &args.auto_tags {
            Some(list) => Some(tags::parse_auto_tags(list)?),
            None => None,
        }
    };
    let annotations = args
        .annotations
        .iter()
        .map(|a| tags::parse_annotation(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TagOptions {
        version: args.version.clone(),
        branch: args.branch.clone(),
        default_branch: args.default_branch.clone(),
        revision: args.revision.clone(),
        source: args.source.clone(),
        created: args.created.clone(),
        tags: args.tags.clone(),
        auto_tags,
        latest: match args.latest {
            LatestArg::Auto => tags::LatestMode::Auto,
            LatestArg::Always => tags::LatestMode::Always,
            LatestArg::Never => tags::LatestMode::Never,
        },
        no_tags: args.no_tags,
        annotations,
    })
}

fn resolve_plan(args: &TagArgs, env: &Env, git: &dyn GitInfo) -> Result<TagPlan> {
    let options = tag_options(args)?;
    Ok(tags::resolve(&options, env, git)?)
}

/// A `--repo` value: `oci:DIR` or a registry repository.
enum Target {
    Layout(PathBuf),
    Registry(Repository),
}

fn parse_target(text: &str, reporter: &dyn Reporter) -> Result<Target> {
    if let Some(dir) = text.strip_prefix("oci:") {
        if dir.is_empty() {
            bail!(UsageError(
                "`--repo oci:` needs a directory, as in `oci:./out`".into()
            ));
        }
        return Ok(Target::Layout(PathBuf::from(dir)));
    }
    let (repository, lowered) =
        Repository::parse_lenient(text).map_err(|e| UsageError(format!("`--repo {text}`: {e}")))?;
    if lowered {
        reporter.on_notice(&format!(
            "notice: repository names are lower-case; publishing to `{repository}`"
        ));
    }
    Ok(Target::Registry(repository))
}

fn default_repos(env: &Env, reporter: &dyn Reporter) -> Result<Vec<String>> {
    match (
        env.get(env::GITHUB_ACTIONS),
        env.get(env::GITHUB_REPOSITORY),
    ) {
        (Some("true"), Some(repo)) => {
            let default = format!("ghcr.io/{}", repo.to_lowercase());
            reporter.on_notice(&format!("no --repo given: publishing to `{default}`"));
            Ok(vec![default])
        }
        _ => bail!(UsageError(
            "no destination: give `--repo REPO` (a registry repository or `oci:DIR`)".into()
        )),
    }
}

fn client_options(args: &RegistryArgs) -> ClientOptions {
    ClientOptions {
        insecure_hosts: args.insecure_registries.clone(),
        ca_files: args.ca_files.clone(),
        jobs: args.jobs.max(1),
        max_retries: args.max_retries,
        retry_timeout: std::time::Duration::from_secs(args.retry_timeout),
        retry_base: std::time::Duration::from_millis(args.retry_base_ms),
        chunk_size: args.chunk_size,
        ..ClientOptions::default()
    }
}

/// One client per registry host, with its credentials resolved, each
/// registry reached (see [`reach_registries`]).
async fn registry_clients(
    repositories: &[&Repository],
    args: &RegistryArgs,
    env: &Env,
) -> Result<HashMap<String, RegistryClient>> {
    let clients = new_registry_clients(repositories, args, env)?;
    reach_registries(&clients).await?;
    Ok(clients)
}

/// One client per registry host, with its credentials resolved; nothing
/// is sent yet.
fn new_registry_clients(
    repositories: &[&Repository],
    args: &RegistryArgs,
    env: &Env,
) -> Result<HashMap<String, RegistryClient>> {
    let explicit = match &args.username {
        Some(user) if args.password_stdin => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                bail!(UsageError("--password-stdin read an empty password".into()));
            }
            Some((user.clone(), registry::Secret::new(password)))
        }
        _ => None,
    };
    let options = client_options(args);
    let lookup = env.lookup();
    let mut clients = HashMap::new();
    for repository in repositories {
        let registry: &Registry = &repository.registry;
        let key = registry.to_string();
        if clients.contains_key(&key) {
            continue;
        }
        let credentials =
            registry::resolve_credentials(registry, &repository.path, explicit.as_ref(), &lookup)
                .with_context(|| format!("cannot find credentials for `{registry}`"))?;
        let client = RegistryClient::new(registry, credentials, &options)
            .with_context(|| format!("cannot set up a client for `{registry}`"))?;
        clients.insert(key, client);
    }
    Ok(clients)
}

/// `GET /v2/` to every registry, together: each costs a connection, a TLS
/// handshake and a round trip, which several registries need not wait on
/// one after another. An unreachable registry fails here, named, with a
/// hint for a host that does not resolve.
async fn reach_registries(clients: &HashMap<String, RegistryClient>) -> Result<()> {
    futures::future::try_join_all(clients.values().map(|client| async move {
        client.ping().await.map_err(|e| {
            let registry = client.registry();
            let hint = if registry::retry::is_unknown_host(&e) {
                format!(
                    "\nhint: no host is named `{}`: check the registry in the reference",
                    registry.hostname()
                )
            } else {
                String::new()
            };
            anyhow::Error::new(e).context(format!("cannot reach the registry `{registry}`{hint}"))
        })
    }))
    .await?;
    Ok(())
}

/// The destinations for `repos`, and the clients of every registry,
/// including those of `sources` (registries inputs are read from), not yet
/// reached ([`reach_registries`]).
fn destinations(
    repos: &[String],
    sources: &[Repository],
    args: &RegistryArgs,
    env: &Env,
    reporter: &dyn Reporter,
    dry_run: bool,
) -> Result<(Vec<Destination>, HashMap<String, RegistryClient>)> {
    let targets: Vec<Target> = repos
        .iter()
        .map(|r| parse_target(r, reporter))
        .collect::<Result<_>>()?;
    let repositories: Vec<&Repository> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Registry(r) => Some(r),
            Target::Layout(_) => None,
        })
        .chain(sources.iter())
        .collect();
    let clients = new_registry_clients(&repositories, args, env)?;
    let destinations = targets
        .into_iter()
        .map(|t| {
            let destination = match t {
                Target::Layout(dir) if dry_run => {
                    Destination::Layout(Arc::new(Layout::unopened(&dir)))
                }
                Target::Layout(dir) => Destination::Layout(Arc::new(Layout::open_or_create(&dir)?)),
                Target::Registry(repository) => Destination::registry_repository(
                    clients[&repository.registry.to_string()].clone(),
                    repository,
                ),
            };
            Ok(if dry_run {
                Destination::DryRun(Box::new(destination))
            } else {
                destination
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((destinations, clients))
}

fn compression(args: &PublishArgs) -> Result<Compression> {
    Ok(match (args.compression, args.compression_level) {
        (CompressionArg::None, _) => Compression::None,
        (CompressionArg::Gzip, None) => Compression::Gzip {
            level: Compression::DEFAULT_GZIP_LEVEL,
        },
        (CompressionArg::Gzip, Some(l)) if (1..=9).contains(&l) => {
            Compression::Gzip { level: l as u32 }
        }
        (CompressionArg::Zstd, None) => Compression::Zstd {
            level: Compression::DEFAULT_ZSTD_LEVEL,
        },
        (CompressionArg::Zstd, Some(l)) if (1..=19).contains(&l) => Compression::Zstd { level: l },
        (c, Some(l)) => {
            let name = clap::ValueEnum::to_possible_value(&c).map(|v| v.get_name().to_owned());
            bail!(UsageError(format!(
                "`--compression-level {l}` is out of range for {} (gzip 1–9, zstd 1–19)",
                name.unwrap_or_default()
            )))
        }
    })
}

/// The last line on stderr: how long, and how much was sent or spared.
fn summary_line(elapsed: std::time::Duration, totals: crate::progress::Totals) -> String {
    use indicatif::HumanBytes;
    let mounted = match totals.bytes_mounted {
        0 => String::new(),
        n => format!("{} mounted, ", HumanBytes(n)),
    };
    format!(
        "done in {:.1} s: {} uploaded, {mounted}{} already in place, {} layer(s) reused without compressing",
        elapsed.as_secs_f64(),
        HumanBytes(totals.bytes_uploaded),
        HumanBytes(totals.bytes_skipped.saturating_sub(totals.bytes_mounted)),
        totals.layers_reused
    )
}

/// One image to publish: from the command line, or one `[[image]]` of a
/// batch file.
struct Job {
    repos: Vec<String>,
    inputs: Vec<InputSpec>,
    /// Tags and annotations of a batch image, besides the command line's.
    tags: Vec<String>,
    annotations: BTreeMap<String, String>,
}

/// The images to publish: one from the command line, or each `[[image]]` of
/// `--config`; tags checked against the OCI grammar.
fn read_jobs(args: &PublishArgs, env: &Env, screen: &dyn Reporter) -> Result<Vec<Job>> {
    let jobs: Vec<Job> = match &args.config {
        Some(path) => publish::batch::read_config(path)
            .map_err(|e| UsageError(render_error(&anyhow::Error::new(e))))?
            .into_iter()
            .map(|image| Job {
                repos: image.repos,
                inputs: image.inputs,
                tags: if args.tags.no_tags {
                    Vec::new()
                } else {
                    image.tags
                },
                annotations: image.annotations,
            })
            .collect(),
        None => vec![Job {
            repos: if args.repos.is_empty() {
                default_repos(env, screen)?
            } else {
                args.repos.clone()
            },
            inputs: args
                .inputs
                .iter()
                .map(|text| text.parse::<InputSpec>())
                .collect::<Result<_, _>>()?,
            tags: Vec::new(),
            annotations: BTreeMap::new(),
        }],
    };
    for job in &jobs {
        for tag in &job.tags {
            if !crate::reference::is_valid_tag(tag) {
                bail!(UsageError(format!("`{tag}` is not a valid tag")));
            }
        }
        check_distinct_inputs(&job.inputs)?;
    }

    Ok(jobs)
}

/// One input given twice, with no platform to tell the two apart, can only
/// make two images of one platform: refused before anything is read or
/// uploaded (the platform check proper needs the configs, which a stream
/// writes last).
fn check_distinct_inputs(inputs: &[InputSpec]) -> Result<()> {
    let mut seen: HashMap<PathBuf, &InputSpec> = HashMap::new();
    for spec in inputs.iter().filter(|s| s.platform.is_none()) {
        // `result` and `./result`, or a symlink and its target, are one file.
        let key = std::fs::canonicalize(&spec.path).unwrap_or_else(|_| spec.path.clone());
        if let Some(first) = seen.insert(key, spec) {
            bail!(UsageError(format!(
                "`{}` and `{}` are the same input; an index holds one image per platform\n\
                 hint: give each platform's image once",
                first.text, spec.text
            )));
        }
    }
    Ok(())
}

/// `--format`: OCI, or Docker (gzip layers only; annotations dropped with a
/// warning naming them).
fn document_format(
    args: &PublishArgs,
    plan: &TagPlan,
    jobs: &[Job],
    screen: &dyn Reporter,
) -> Result<crate::manifest::Format> {
    Ok(match args.format {
        FormatArg::Oci => crate::manifest::Format::Oci,
        FormatArg::Docker => {
            if args.compression != CompressionArg::Gzip {
                bail!(UsageError(
                    "`--format docker` needs gzip layers: Docker v2s2 manifests cannot cite others"
                        .into()
                ));
            }
            if !plan.annotations.is_empty() || jobs.iter().any(|j| !j.annotations.is_empty()) {
                let mut keys: Vec<&str> = plan.annotations.keys().map(String::as_str).collect();
                for job in jobs {
                    keys.extend(job.annotations.keys().map(String::as_str));
                }
                keys.sort_unstable();
                keys.dedup();
                screen.on_notice(&format!(
                    "warning: Docker manifest lists carry no annotations; dropping {}",
                    keys.join(", ")
                ));
            }
            crate::manifest::Format::Docker
        }
    })
}

async fn run_publish(args: PublishArgs, env: &Env, screen: Arc<dyn Reporter>) -> Result<()> {
    let started = std::time::Instant::now();
    let plan = resolve_plan(&args.tags, env, &SystemGit)?;
    for warning in &plan.warnings {
        screen.on_notice(&format!("warning: {warning}"));
    }
    for notice in &plan.notices {
        screen.on_notice(&format!("notice: {notice}"));
    }
    plan.check_writable(args.dry_run)?;
    if let Some(path) = &args.metadata_file {
        outputs::check_metadata_file(path)?;
    }
    let batch = args.config.is_some();
    let jobs = read_jobs(&args, env, &*screen)?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|text| {
            text.parse::<publish::known::CacheFrom>()
                .map_err(UsageError)
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Every repository and every `docker://` source at once, so that a
    // password from stdin is read once and each registry gets one client.
    let mut all_repos: Vec<String> = Vec::new();
    for repo in jobs.iter().flat_map(|j| j.repos.iter()) {
        if !all_repos.contains(repo) {
            all_repos.push(repo.clone());
        }
    }
    let mut source_repos: Vec<Repository> = Vec::new();
    for spec in jobs.iter().flat_map(|j| j.inputs.iter()) {
        if spec.kind == Some(crate::input::InputKind::Remote) {
            let text = spec.path.to_string_lossy();
            let reference = crate::reference::Reference::parse(&text)
                .map_err(|e| UsageError(format!("`{}`: {e}", spec.text)))?;
            source_repos.push(reference.repository);
        }
    }
    let (all_destinations, clients) = destinations(
        &all_repos,
        &source_repos,
        &args.registry,
        env,
        &*screen,
        args.dry_run,
    )?;
    let sources: publish::remote::SourceClients = Arc::new(clients);

    let format = document_format(&args, &plan, &jobs, &*screen)?;
    let tally = Arc::new(Tally::new(screen.clone()));
    let reporter: Arc<dyn Reporter> = tally.clone();
    let spool_dir = args.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let manifest_annotations = match args.annotation_level {
        AnnotationLevel::Index => BTreeMap::new(),
        AnnotationLevel::IndexAndManifest => plan.annotations.clone(),
    };
    let compression = compression(&args)?;
    let mut requests = Vec::new();
    for job in jobs {
        let job_destinations: Vec<Destination> = job
            .repos
            .iter()
            .filter_map(|r| all_repos.iter().position(|a| a == r))
            .map(|i| all_destinations[i].clone())
            .collect();
        let mut tags = plan.tags.clone();
        for tag in &job.tags {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        let extra_tags = job.tags.clone();
        let tag_set = TagSet {
            tags,
            guard: match args.tags.tag_guard {
                Switch::Off => None,
                Switch::On if plan.tags.is_empty() => None,
                Switch::On => {
                    let plan = plan.clone();
                    Some(Arc::new(move |existing: &[String]| {
                        let outcome = tags::apply_guard(&plan, existing);
                        let mut kept = outcome.kept;
                        for tag in &extra_tags {
                            if !kept.contains(tag) {
                                kept.push(tag.clone());
                            }
                        }
                        (kept, outcome.withheld)
                    }))
                }
            },
        };
        let label_plan = plan.clone();
        let extra_annotations = job.annotations.clone();
        let mut index_annotations = plan.annotations.clone();
        index_annotations.extend(job.annotations.clone());
        requests.push(publish::Request {
            inputs: job.inputs,
            destinations: job_destinations,
            image: ImageOptions {
                format,
                compression,
                spool_dir: spool_dir.clone(),
                manifest_annotations: manifest_annotations.clone(),
                known: Arc::new(|_| None),
                mounted: Default::default(),
                stream_timeout: args.stream_timeout.map(std::time::Duration::from_secs),
                gate: publish::gate::Gate::opened(),
            },
            index_annotations,
            complete_annotations: Some(Arc::new(
                move |annotations: &mut BTreeMap<String, String>, images: &[PublishedImage]| {
                    let labels: Vec<BTreeMap<String, String>> = images
                        .iter()
                        .map(|i| {
                            i.config
                                .config
                                .as_ref()
                                .and_then(|c| c.labels.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    *annotations = tags::annotations_from_labels(&label_plan, &labels);
                    annotations.extend(extra_annotations.clone());
                },
            )),
            tags: tag_set,
            cache_from: cache_from.clone(),
            cache: cache_dir(env)
                .filter(|_| !args.no_cache)
                .map(|dir| publish::known::LayerCache::in_dir(&dir))
                // A dry run plans with what the cache knows, and adds nothing.
                .map(|cache| {
                    if args.dry_run {
                        cache.read_only()
                    } else {
                        cache
                    }
                }),
            sources: sources.clone(),
            arch_tags: args.arch_tags,
            before_tags: None,
            gate_also_waits_for: None,
        });
    }
    let publishing = async {
        if batch {
            publish::batch::publish_batch(requests, reporter).await
        } else {
            let mut requests = requests;
            let request = requests
                .pop()
                .context("nothing to publish: no image was given")?;
            Ok(vec![publish::publish(request, reporter).await?])
        }
    };
    // The registries are reached while the inputs start. The pings go
    // first (polled first, each holds its client's auth state): every
    // request of the publish waits for its registry's ping, and an
    // unreachable registry fails the run with the ping's error, before any
    // upload.
    let ((), reports) = futures::try_join!(reach_registries(&sources), publishing)?;

    if !args.dry_run {
        tally.on_notice(&summary_line(started.elapsed(), tally.totals()));
    }
    tally.finish();
    let version = plan.version.as_ref().map(|v| v.text.clone());
    outputs::print_reports(
        &reports,
        version,
        tally.totals(),
        args.dry_run,
        batch,
        args.metadata_file.as_ref(),
        env,
    )
}

/// `$XDG_CACHE_HOME/manifold`, else `~/.cache/manifold`.
fn cache_dir(env: &Env) -> Option<PathBuf> {
    env.get(env::XDG_CACHE_HOME)
        .map(PathBuf::from)
        .or_else(|| env.get(env::HOME).map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("manifold"))
}

async fn run_tags(args: TagsArgs, env: &Env) -> Result<()> {
    let plan = resolve_plan(&args.tags, env, &SystemGit)?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let (tags, withheld) = match &args.repo {
        Some(repo) if args.tags.tag_guard == Switch::On => {
            let quiet = progress::Quiet;
            let (destinations, clients) = destinations(
                std::slice::from_ref(repo),
                &[],
                &args.registry,
                env,
                &quiet,
                true,
            )?;
            reach_registries(&clients).await?;
            let existing = destinations[0].list_tags().await?;
            let outcome = tags::apply_guard(&plan, &existing);
            (outcome.kept, outcome.withheld)
        }
        _ => (plan.tags.clone(), Vec::new()),
    };
    for (tag, why) in &withheld {
        eprintln!("not moving `{tag}`: {why}");
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        value["tags"] = serde_json::json!(tags);
        value["withheld"] = serde_json::json!(withheld
            .iter()
            .map(|(t, r)| serde_json::json!({"tag": t, "reason": r}))
            .collect::<Vec<_>>());
        serde_json::to_writer_pretty(&mut stdout, &value)?;
        writeln!(stdout)?;
    } else {
        for tag in &tags {
            writeln!(stdout, "{tag}")?;
        }
    }
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_input_twice_is_refused_unless_platforms_tell_them_apart() {
        let specs = |texts: &[&str]| -> Vec<InputSpec> {
            texts.iter().map(|t| t.parse().unwrap()).collect()
        };
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let same = [
            format!("{data}/fd-amd64.tar"),
            format!("{data}/../testdata/fd-amd64.tar"),
        ];
        let err = check_distinct_inputs(&specs(&[&same[0], &same[1]])).unwrap_err();
        assert!(err.is::<UsageError>());
        assert!(err.to_string().contains("are the same input"), "{err}");
        let err = check_distinct_inputs(&specs(&["docker://r/x:1", "docker://r/x:1"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("`docker://r/x:1` and `docker://r/x:1`"),
            "{err}"
        );

        let arm = [
            format!("linux/arm/v6={}", same[0]),
            format!("linux/arm/v7={}", same[1]),
        ];
        for ok in [
            vec![same[0].as_str(), "docker://r/x:1"],
            vec![arm[0].as_str(), arm[1].as_str()],
            vec![same[0].as_str(), arm[1].as_str()],
        ] {
            assert!(check_distinct_inputs(&specs(&ok)).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn an_error_chain_is_rendered_once_with_hints_last() {
        let error = anyhow::anyhow!("No such file or directory (os error 2)")
            .context("cannot open input `nope`: No such file or directory (os error 2)")
            .context("hint: check the path\npublishing failed");
        assert_eq!(
            render_error(&error),
            "publishing failed\n  caused by: cannot open input `nope`: No such file or directory (os error 2)\nhint: check the path"
        );
    }

    #[test]
    fn further_lines_of_one_message_stay_under_it() {
        let error = anyhow::anyhow!(
            "stream `s` failed (exit status: 3); its last stderr lines:\n  boom\n  bang"
        )
        .context("reading `s`");
        assert_eq!(
            render_error(&error),
            "reading `s`\n  caused by: stream `s` failed (exit status: 3); its last stderr lines:\n  boom\n  bang"
        );
    }
}

//! Draws progress: indicatif bars on a terminal, plain lines elsewhere (CI
//! logs keep no ANSI codes), nothing with `--quiet`.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;
use crate::progress::{BlobOutcome, Reporter};

/// Bars on a terminal.
pub struct Bars {
    multi: MultiProgress,
    layers: Mutex<Vec<ProgressBar>>,
    upload: ProgressBar,
}

impl Bars {
    pub fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let upload = multi.add(ProgressBar::new_spinner());
        upload.set_style(
            ProgressStyle::with_template("{spinner} uploaded {bytes} ({bytes_per_sec}) {msg}")
                .expect("template"),
        );
        upload.enable_steady_tick(Duration::from_millis(120));
        Bars {
            multi,
            layers: Mutex::new(Vec::new()),
            upload,
        }
    }

    fn layer(&self, id: usize) -> Option<ProgressBar> {
        self.layers.lock().ok()?.get(id).cloned()
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

fn short_member(member: &str) -> String {
    let m = member.trim_end_matches("/layer.tar");
    if m.len() > 16 {
        m[..12].to_owned()
    } else {
        m.to_owned()
    }
}

impl Reporter for Bars {
    fn on_layer_started(&self, input: &str, member: &str, size: u64) -> usize {
        // 0: a compressed layer, whose uncompressed size is not known.
        let (bar, template) = match size {
            0 => (
                ProgressBar::no_length(),
                "{prefix:.bold} {msg} {bytes} {bytes_per_sec}",
            ),
            _ => (
                ProgressBar::new(size),
                "{prefix:.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            ),
        };
        let bar = self.multi.insert_before(&self.upload, bar);
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(input.to_owned());
        bar.set_message(short_member(member));
        let mut layers = self.layers.lock().expect("progress lock");
        layers.push(bar);
        layers.len() - 1
    }
    fn on_layer_read(&self, id: usize, bytes: u64) {
        if let Some(bar) = self.layer(id) {
            bar.inc(bytes);
        }
    }
    fn on_layer_done(&self, id: usize, skipped: bool) {
        // A finished layer leaves the live area for a line above it, as in
        // `Lines`: only layers in progress keep a bar, however many there are.
        if let Some(bar) = self.layer(id) {
            bar.finish_and_clear();
            let line = layer_line(&bar.prefix(), &bar.message(), skipped);
            self.multi.println(line).ok();
        }
    }
    fn on_upload_progress(&self, _destination: &str, bytes: i64) {
        if bytes >= 0 {
            self.upload.inc(bytes as u64);
        } else {
            self.upload
                .set_position(self.upload.position().saturating_sub(bytes.unsigned_abs()));
        }
    }
    fn on_manifest_pushed(&self, destination: &str, what: &str, digest: &Digest, already: bool) {
        self.multi
            .println(manifest_line(destination, what, digest, already))
            .ok();
    }
    fn on_tag(&self, destination: &str, tag: &str) {
        self.multi
            .println(format!("{destination}: tagged {tag}"))
            .ok();
    }
    fn on_notice(&self, message: &str) {
        self.multi.println(message).ok();
    }
    fn finish(&self) {
        // Readers stopped by an error or a signal may still tick their bars,
        // and the spinner ticks on its own thread: each bar is taken off the
        // screen and drawn nowhere from then on, the ticker joined.
        if let Ok(layers) = self.layers.lock() {
            for bar in layers.iter() {
                bar.set_draw_target(ProgressDrawTarget::hidden());
            }
        }
        self.upload.disable_steady_tick();
        self.upload.set_draw_target(ProgressDrawTarget::hidden());
        self.multi.clear().ok();
    }
}

fn layer_line(input: &str, member: &str, skipped: bool) -> String {
    let what = if skipped {
        "already published"
    } else {
        "compressed"
    };
    format!("{input}: layer {member} {what}")
}

/// Plain lines, for CI logs and pipes.
pub struct Lines {
    layers: Mutex<Vec<(String, String)>>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines {
            layers: Mutex::new(Vec::new()),
        }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new()
    }
}

impl Reporter for Lines {
    fn on_input_started(&self, input: &str) {
        eprintln!("{input}: reading");
    }
    fn on_layer_started(&self, input: &str, member: &str, _size: u64) -> usize {
        let mut layers = self.layers.lock().expect("progress lock");
        layers.push((input.to_owned(), short_member(member)));
        layers.len() - 1
    }
    fn on_layer_done(&self, id: usize, skipped: bool) {
        if let Some((input, member)) = self.layers.lock().expect("progress lock").get(id) {
            eprintln!("{}", layer_line(input, member, skipped));
        }
    }
    fn on_blob_done(&self, destination: &str, digest: &Digest, size: u64, outcome: BlobOutcome) {
        let what = match outcome {
            BlobOutcome::Uploaded => "uploaded",
            BlobOutcome::AlreadyPresent => "already present",
            BlobOutcome::Mounted => "mounted",
            BlobOutcome::Planned => "to upload",
        };
        eprintln!(
            "{destination}: blob {} ({size} bytes) {what}",
            digest.short()
        );
    }
    fn on_manifest_pushed(&self, destination: &str, what: &str, digest: &Digest, already: bool) {
        eprintln!("{}", manifest_line(destination, what, digest, already));
    }
    fn on_tag(&self, destination: &str, tag: &str) {
        eprintln!("{destination}: tagged {tag}");
    }
    fn on_notice(&self, message: &str) {
        eprintln!("{message}");
    }
}

fn manifest_line(destination: &str, what: &str, digest: &Digest, already: bool) -> String {
    if already {
        format!("{destination}: already has {what} {digest}")
    } else {
        format!("{destination}: pushed {what} {digest}")
    }
}

/// Only notices (warnings), for `--quiet`.
pub struct Quiet;

impl Reporter for Quiet {}

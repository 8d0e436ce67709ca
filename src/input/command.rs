//! Runs a `streamLayeredImage` script: its stdout is the docker-archive, its
//! stderr is the user's log.
//!
//! The script runs in its own process group with stdin closed; stdout is
//! handed to the archive reader as a plain `Read`, and stderr is forwarded
//! line by line (to `tracing` or a callback) while its last lines are kept for
//! the error message. [`StreamCommand::finish`] turns a failed, killed, timed
//! out or silent process into an error naming the input; dropping an
//! unfinished command kills its whole process group, so an abandoned publish
//! leaves no orphans. Parsing the archive is [`super::docker_archive`]'s job.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::InputError;

/// How many stderr lines are kept for the error message.
const STDERR_TAIL: usize = 20;
/// Longest stderr line kept; longer ones are cut (bounded memory).
const STDERR_LINE_MAX: u64 = 4096;
/// How long `finish` waits for stderr to close once the process exited (a
/// grandchild may hold it open).
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// The pipe size asked for a stream's stdout: Linux's default 64 KiB makes
/// the script and manifold take turns every 64 KiB (a wake-up and a context
/// switch each way); 1 MiB is the most an unprivileged process may ask for.
const STDOUT_PIPE_SIZE: libc::c_int = 1 << 20;

/// Receives each stderr line of a stream.
pub type StderrSink = Box<dyn FnMut(&str) + Send>;

/// Options for [`StreamCommand::spawn_with`].
#[derive(Default)]
pub struct StreamOptions {
    /// Kill the process group when it runs longer than this.
    pub timeout: Option<Duration>,
    /// Where stderr lines go; default `tracing::info!` prefixed with the input.
    pub on_stderr: Option<StderrSink>,
}

/// A running stream script. Reading it reads its stdout.
pub struct StreamCommand {
    name: String,
    child: Child,
    stdout: Option<ChildStdout>,
    bytes_read: u64,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: Option<mpsc::Receiver<()>>,
    watchdog: Option<Watchdog>,
    finished: bool,
}

struct Watchdog {
    stop: mpsc::Sender<()>,
    fired: Arc<AtomicBool>,
    timeout: Duration,
    thread: JoinHandle<()>,
}

impl StreamCommand {
    /// Starts `path`, forwarding its stderr to `tracing`.
    pub fn spawn(name: &str, path: &Path) -> Result<StreamCommand, InputError> {
        StreamCommand::spawn_with(name, path, StreamOptions::default())
    }

    /// Starts `path` with options.
    pub fn spawn_with(
        name: &str,
        path: &Path,
        options: StreamOptions,
    ) -> Result<StreamCommand, InputError> {
        // A bare relative name (`result`) must not be looked up in `PATH`.
        let program = if path.is_relative() {
            Path::new(".").join(path)
        } else {
            path.to_owned()
        };
        let mut command = Command::new(&program);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that killing it reaches whatever it started.
            .process_group(0);
        let mut child = crate::spawn::spawn_retrying_busy(&mut command).map_err(|source| {
            if source.raw_os_error() == Some(libc::ENOEXEC) {
                InputError::ExecFormat {
                    input: name.to_owned(),
                }
            } else {
                InputError::Spawn {
                    input: name.to_owned(),
                    source,
                }
            }
        })?;
        running_groups().push(child.id() as libc::pid_t);
        let stdout = child.stdout.take();
        if let Some(stdout) = &stdout {
            widen_pipe(stdout);
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_done = child.stderr.take().map(|stderr| {
            let (done_tx, done_rx) = mpsc::channel();
            let sink = options.on_stderr.unwrap_or_else(|| {
                let name = name.to_owned();
                Box::new(move |line: &str| tracing::info!("{name}: {line}"))
            });
            let tail = tail.clone();
            std::thread::spawn(move || {
                forward_stderr(stderr, sink, &tail);
                let _ = done_tx.send(());
            });
            done_rx
        });
        let watchdog = options.timeout.map(|timeout| {
            let (stop, stopped) = mpsc::channel::<()>();
            let fired = Arc::new(AtomicBool::new(false));
            let pgid = child.id() as libc::pid_t;
            let thread = std::thread::spawn({
                let fired = fired.clone();
                move || {
                    if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
                        fired.store(true, Ordering::SeqCst);
                        kill_group(pgid);
                    }
                }
            });
            Watchdog {
                stop,
                fired,
                timeout,
                thread,
            }
        });
        Ok(StreamCommand {
            name: name.to_owned(),
            child,
            stdout,
            bytes_read: 0,
            tail,
            stderr_done,
            watchdog,
            finished: false,
        })
    }

    /// The input's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes read from stdout so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads and discards the rest of stdout, so the process can run to its
    /// end (used after a read error, to learn whether the process failed).
    pub fn drain(&mut self) {
        let _ = io::copy(self, &mut io::sink());
    }

    /// Waits for the process. Errors when it exited non-zero, was killed,
    /// timed out, or wrote nothing on stdout.
    pub fn finish(mut self) -> Result<(), InputError> {
        // Closing stdout first: a process still writing gets EPIPE instead
        // of blocking forever.
        self.stdout = None;
        let status = self.child.wait();
        forget_group(self.child.id() as libc::pid_t);
        let status = status.map_err(|source| InputError::Spawn {
            input: self.name.clone(),
            source,
        });
        self.finished = true;
        let timed_out = self.stop_watchdog();
        if let Some(done) = self.stderr_done.take() {
            let _ = done.recv_timeout(STDERR_GRACE);
        }
        let status = status?;
        if let Some(after) = timed_out {
            return Err(InputError::TimedOut {
                input: self.name.clone(),
                after,
            });
        }
        let stderr: Vec<String> = match self.tail.lock() {
            Ok(t) => t.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if !status.success() {
            return Err(InputError::Exited {
                input: self.name.clone(),
                status: status.to_string(),
                stderr,
            });
        }
        if self.bytes_read == 0 {
            return Err(InputError::EmptyStream {
                input: self.name.clone(),
                stderr,
            });
        }
        Ok(())
    }

    /// Stops the watchdog; the timeout if it fired.
    fn stop_watchdog(&mut self) -> Option<Duration> {
        let w = self.watchdog.take()?;
        drop(w.stop);
        let _ = w.thread.join();
        w.fired.load(Ordering::SeqCst).then_some(w.timeout)
    }
}

impl Read for StreamCommand {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(stdout) = &mut self.stdout else {
            return Ok(0);
        };
        let n = stdout.read(buf)?;
        self.bytes_read += n as u64;
        Ok(n)
    }
}

impl Drop for StreamCommand {
    fn drop(&mut self) {
        if !self.finished {
            kill_group(self.child.id() as libc::pid_t);
            self.stdout = None;
            let _ = self.child.wait();
            forget_group(self.child.id() as libc::pid_t);
            self.stop_watchdog();
        }
    }
}

/// Process groups of stream scripts still running, so that an interrupted
/// run can stop them even while a reader thread is blocked on their output.
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn running_groups() -> std::sync::MutexGuard<'static, Vec<libc::pid_t>> {
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn forget_group(pgid: libc::pid_t) {
    running_groups().retain(|p| *p != pgid);
}

/// Kills every stream script this process started that is still running
/// (on Ctrl-C or SIGTERM): nothing is left orphaned.
pub fn kill_all_running() {
    let groups: Vec<libc::pid_t> = running_groups().drain(..).collect();
    for pgid in groups {
        kill_group(pgid);
    }
}

fn kill_group(pgid: libc::pid_t) {
    if pgid > 0 {
        // SAFETY: kill(2) has no memory effects; a negative pid names the
        // process group the child leads (`process_group(0)`).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

fn forward_stderr(stderr: impl Read, mut sink: StderrSink, tail: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(STDERR_LINE_MAX)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        sink(text);
        if let Ok(mut t) = tail.lock() {
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(text.to_owned());
        }
    }
}

/// Widens the stream's stdout pipe to [`STDOUT_PIPE_SIZE`]. Best effort: a
/// kernel without `F_SETPIPE_SZ`, or a lower `/proc/sys/fs/pipe-max-size`,
/// leaves the default, which is only slower.
fn widen_pipe(stdout: &ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int and
    // touches no memory of ours.
    let _ = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, STDOUT_PIPE_SIZE) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::testdata;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn collecting() -> (StreamOptions, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let options = StreamOptions {
            timeout: None,
            on_stderr: Some(Box::new(move |s: &str| {
                l.lock().unwrap().push(s.to_owned())
            })),
        };
        (options, lines)
    }

    #[test]
    fn the_fixture_stream_writes_the_archive_and_logs_on_stderr() {
        let (options, lines) = collecting();
        let mut c = StreamCommand::spawn_with("amd64", &testdata("stream-amd64"), options).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        c.finish().unwrap();
        assert_eq!(out, fs::read(testdata("fd-amd64.tar")).unwrap());
        let lines = lines.lock().unwrap();
        assert!(
            lines.iter().any(|l| l == "Adding manifests..."),
            "{lines:?}"
        );
    }

    #[test]
    fn a_failing_stream_reports_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "fail",
            "#!/bin/sh\necho partial\necho 'error: out of disk' >&2\nexit 3\n",
        );
        let (options, _) = collecting();
        let mut c = StreamCommand::spawn_with("fail", &p, options).unwrap();
        c.drain();
        let err = c.finish().unwrap_err().to_string();
        assert!(err.contains("stream `fail` failed"), "{err}");
        assert!(err.contains('3'), "{err}");
        assert!(err.contains("error: out of disk"), "{err}");
    }

    #[test]
    fn a_silent_stream_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "silent", "#!/bin/sh\nexit 0\n");
        let mut c = StreamCommand::spawn("silent", &p).unwrap();
        c.drain();
        assert!(matches!(c.finish(), Err(InputError::EmptyStream { .. })));
    }

    #[test]
    fn a_foreign_binary_is_an_exec_format_error_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        // An ELF header for another machine (e_machine 0xffff).
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(64, 0);
        elf[16] = 2;
        elf[18] = 0xff;
        elf[19] = 0xff;
        let p = dir.path().join("stream-foreign");
        fs::write(&p, &elf).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let err = StreamCommand::spawn("stream-foreign", &p).err().unwrap();
        assert!(matches!(err, InputError::ExecFormat { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("`stream-foreign`") && msg.contains("hint: "),
            "{msg}"
        );
        assert!(msg.contains("buildLayeredImage"), "{msg}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = StreamCommand::spawn("nope", Path::new("/nonexistent/stream"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    fn alive(pid: i32) -> bool {
        // A zombie is as good as dead: it runs nothing.
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn wait_for_file(p: &Path) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(s) = fs::read_to_string(p) {
                if s.ends_with('\n') {
                    return s.trim().to_owned();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} never appeared", p.display());
    }

    #[test]
    fn dropping_an_unfinished_stream_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let p = script(
            dir.path(),
            "hang",
            &format!(
                "#!/bin/sh\nsleep 60 &\necho $! > {}\nwait\n",
                pidfile.display()
            ),
        );
        let c = StreamCommand::spawn("hang", &p).unwrap();
        let grandchild: i32 = wait_for_file(&pidfile).parse().unwrap();
        assert!(alive(grandchild));
        drop(c);
        let start = Instant::now();
        while alive(grandchild) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn stdout_pipe_is_widened() {
        let max: i32 = fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "quiet", "#!/bin/sh\necho hi\n");
        let mut c = StreamCommand::spawn("quiet", &p).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(c.stdout.as_ref().unwrap());
        // SAFETY: F_GETPIPE_SZ on a descriptor the command owns.
        let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        if max >= STDOUT_PIPE_SIZE {
            assert_eq!(size, STDOUT_PIPE_SIZE);
        } else {
            assert!(size > 0, "{}", io::Error::last_os_error());
        }
        c.drain();
        c.finish().unwrap();
    }

    #[test]
    fn a_timeout_kills_the_stream_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "slow", "#!/bin/sh\nsleep 60\n");
        let options = StreamOptions {
            timeout: Some(Duration::from_millis(300)),
            on_stderr: None,
        };
        let start = Instant::now();
        let mut c = StreamCommand::spawn_with("slow", &p, options).unwrap();
        c.drain();
        let err = c.finish().unwrap_err();
        assert!(matches!(err, InputError::TimedOut { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

//! Starting child processes (stream scripts, credential helpers).

use std::io;
use std::process::{Child, Command};
use std::time::Duration;

/// How often a spawn refused with "text file busy" is tried again.
const BUSY_RETRIES: u32 = 10;

/// Spawns `command`, trying again a few times on `ETXTBSY`. A script just
/// written by this process (or its caller) is "busy" while any child forked
/// meanwhile has not reached its own exec yet, since that child still holds
/// the write descriptor. The window is a few milliseconds and closes by
/// itself, so waiting it out is the known remedy.
pub fn spawn_retrying_busy(command: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10 * u64::from(tries)));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_program_busy_for_a_moment_still_starts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("busy");
        fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        // An open write descriptor makes exec fail with ETXTBSY, as a
        // sibling's fork that has not reached exec yet does.
        let writer = fs::OpenOptions::new().append(true).open(&p).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(writer);
        });
        let out = spawn_retrying_busy(Command::new(&p).stdout(std::process::Stdio::piped()))
            .unwrap()
            .wait_with_output()
            .unwrap();
        release.join().unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }
}

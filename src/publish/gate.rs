//! The point before which nothing is uploaded: the reads a publish makes
//! first (the tag guard's tag lists, the known-layer map) are done, and in
//! a batch the images before this one on a shared registry (`batch`).
//!
//! Inputs start before it, so a stream script's start-up and first layer
//! overlap the registry's round trips; their uploads wait for the gate, and
//! so do their known-layer lookups (on the reader threads). A docker-archive
//! reader does not wait: while the gate is shut it compresses a layer named
//! after its diff_id on speculation, and stops as soon as the map, once in,
//! says the destinations have it (`input::docker_archive`). A nix2container
//! input waits 50 ms, then builds on speculation the layers only the map
//! can decide (`nix2container`). No one waits for the gate with an encoding
//! slot in hand (`layer::slots`).

use anyhow::{bail, Result};
use tokio::sync::watch;

/// Waits for the gate. Clones share it.
#[derive(Clone)]
pub struct Gate(watch::Receiver<Option<bool>>);

/// Opens (or fails) the gate; dropping it unopened fails it.
pub struct GateOpener(Option<watch::Sender<Option<bool>>>);

impl Gate {
    pub fn new() -> (GateOpener, Gate) {
        let (tx, rx) = watch::channel(None);
        (GateOpener(Some(tx)), Gate(rx))
    }

    /// A gate with nothing to wait for.
    pub fn opened() -> Gate {
        Gate(watch::channel(Some(true)).1)
    }

    /// Until the gate opens; an error when the reads before it failed (the
    /// publish then fails with their own error).
    pub async fn wait(&self) -> Result<()> {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await.map(|state| *state) {
            Ok(Some(true)) => Ok(()),
            _ => bail!("the registry reads before the uploads failed"),
        }
    }

    /// Whether the gate has opened or failed: [`Gate::wait`] would not wait.
    pub fn is_settled(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// [`Gate::wait`] for the synchronous reader threads (`spawn_blocking`):
    /// whether it opened. On a multi-thread runtime's worker it leaves the
    /// worker first; never call it on a current-thread runtime's own thread
    /// with the gate shut (that thread may be the one to open it).
    pub fn wait_blocking(&self) -> bool {
        if let Some(open) = *self.0.borrow() {
            return open;
        }
        tokio::task::block_in_place(|| futures::executor::block_on(self.wait())).is_ok()
    }
}

impl GateOpener {
    pub fn open(mut self) {
        if let Some(tx) = self.0.take() {
            tx.send_replace(Some(true));
        }
    }
}

impl Drop for GateOpener {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.send_replace(Some(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_go_once_the_gate_opens_and_fail_when_it_is_dropped() {
        assert!(Gate::opened().wait().await.is_ok());
        assert!(Gate::opened().wait_blocking());

        let (opener, gate) = Gate::new();
        let blocked = tokio::task::spawn_blocking({
            let gate = gate.clone();
            move || gate.wait_blocking()
        });
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait().await.is_ok() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!blocked.is_finished() && !waiting.is_finished());
        opener.open();
        assert!(blocked.await.unwrap());
        assert!(waiting.await.unwrap());

        let (opener, gate) = Gate::new();
        drop(opener);
        assert!(gate.wait().await.is_err());
        assert!(!gate.wait_blocking());
    }
}

//! How many layers are encoded at once, process-wide.
//!
//! Each layer being encoded holds several MiB: its share of the blocks at
//! the compression workers, the block being read and the one held back, and
//! the spool's in-memory tail. With a dozen stream inputs at once, before
//! this limit, that was 150 MB. More layers at once cannot go faster
//! either: one layer already spreads over every core (see `gzip`), and
//! uploads run from the spools, outside the slots. So a layer waits for a
//! slot before it reads its first byte, and its input waits with it (a
//! stream script blocks on its full pipe).
//!
//! `encode_layer` takes a [`Slot`], so no layer is encoded without one; its
//! caller takes it first (nix2container, before starting the layer's tar
//! writer, whose buffers would otherwise wait too).
//!
//! No deadlock: a layer is claimed (`publish::in_flight`) only with a slot
//! in hand, never before taking one. A slot holder may wait for a claim (a
//! reader that compressed a layer on speculation asks, slot in hand,
//! whether another input is publishing it), but the layer it waits for is
//! then either being encoded by a slot holder that waits for nothing but
//! its own input, or encoded already and only uploading, which needs no
//! slot. Layers that are only hashed (the destination has them) give their
//! slot back before they are read. A slot holder waits for nothing else
//! that needs a slot: the known-layer lookups it makes wait only for the
//! publish's gate (registry reads, and in a batch the images before this
//! one, which `publish::batch` puts behind the gate for this reason).

use std::sync::{Condvar, Mutex};

/// Layers encoded at once: as many as a two-architecture nix2container
/// publish builds (two per image), more than the two inputs of a stream
/// one, so neither ever waits; and a bound on layer buffers whatever the
/// number of inputs (twelve inputs at once: 48 MiB peak RSS in all, see
/// bench/README.md, "Memory").
pub const MAX_ENCODING: usize = 4;

/// A counting semaphore for threads that block (encoders run on blocking
/// threads, not on the async runtime).
pub struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One slot, given back on drop.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    pub const fn new(max: usize) -> Slots {
        Slots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    /// The slots every layer encoding shares.
    pub fn global() -> &'static Slots {
        static SLOTS: Slots = Slots::new(MAX_ENCODING);
        &SLOTS
    }

    /// Waits for a free slot (at least one always exists).
    pub fn take(&self) -> Slot<'_> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= self.max.max(1) {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot(self)
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_taker_waits_until_a_slot_is_given_back() {
        let slots = Slots::new(2);
        let a = slots.take();
        let b = slots.take();
        assert_eq!(slots.used(), 2);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _c = slots.take();
                tx.send(()).unwrap();
            });
            // Still waiting: both slots are taken.
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            drop(a);
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the third taker got the freed slot");
        });
        assert_eq!(slots.used(), 1);
        drop(b);
        assert_eq!(slots.used(), 0);
    }

    #[test]
    fn zero_slots_still_lets_one_layer_through() {
        let slots = Slots::new(0);
        let a = slots.take();
        assert_eq!(slots.used(), 1);
        drop(a);
        assert_eq!(slots.used(), 0);
    }
}

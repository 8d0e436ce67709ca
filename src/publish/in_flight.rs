//! Layers that one input of a publish is compressing and uploading right
//! now, by diff_id: another input that meets the same layer (an
//! architecture-independent layer, the same base in two images) waits for
//! that blob instead of compressing and uploading it a second time, the way
//! the known-layer map spares layers the registry already has.
//!
//! The first input to meet a diff_id claims it and gets a [`Claim`]; the
//! others wait (on their blocking reader threads) until the claim is
//! resolved with the descriptor of the blob now in place at every
//! destination, or abandoned (the layer's real diff_id differed from the
//! name it came under, its upload failed, or the input was dropped), in
//! which case each compresses its own copy. A claim is taken when a layer
//! starts, with an encoding slot in hand (`layer::slots`), and resolved when
//! its upload ends, which needs nothing from any other reader, so waiting
//! readers cannot deadlock, even those that wait with a slot.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::digest::Digest;
use crate::oci::Descriptor;

enum State {
    Pending,
    Done(Descriptor),
    Abandoned,
}

struct Slot {
    state: Mutex<State>,
    changed: Condvar,
}

impl Slot {
    fn pending() -> Slot {
        Slot {
            state: Mutex::new(State::Pending),
            changed: Condvar::new(),
        }
    }

    /// Settles a pending slot; a settled one stays as it is.
    fn settle(&self, state: State) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, State::Pending) {
            *s = state;
            self.changed.notify_all();
        }
    }

    fn wait(&self) -> Option<Descriptor> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*s {
                State::Done(d) => return Some(d.clone()),
                State::Abandoned => return None,
                State::Pending => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// The layers being published by some input of this publish.
#[derive(Default)]
pub struct InFlight {
    slots: Mutex<HashMap<Digest, Arc<Slot>>>,
}

/// The right, and duty, to publish one layer for every input that has it:
/// [`Claim::resolve`] it once the blob is in place everywhere. Dropped
/// unresolved, it is abandoned and the waiting inputs go their own way.
pub struct Claim {
    diff_id: Digest,
    slot: Arc<Slot>,
}

impl Claim {
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    pub fn resolve(self, descriptor: Descriptor) {
        self.slot.settle(State::Done(descriptor));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.slot.settle(State::Abandoned);
    }
}

/// What [`InFlight::claim_or_wait`] found.
pub enum Claimed {
    /// Nobody had it: this input publishes the layer.
    Mine(Claim),
    /// Another input published it: reuse this blob.
    Published(Descriptor),
    /// Another input gave it up: publish it, without a claim.
    Abandoned,
}

impl InFlight {
    /// Claims `diff_id`, or, when another input has, blocks until that
    /// input resolves or abandons it. Call from a blocking thread.
    pub fn claim_or_wait(&self, diff_id: &Digest) -> Claimed {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(diff_id) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(Slot::pending());
                    slots.insert(diff_id.clone(), slot.clone());
                    return Claimed::Mine(Claim {
                        diff_id: diff_id.clone(),
                        slot,
                    });
                }
            }
        };
        match slot.wait() {
            Some(descriptor) => Claimed::Published(descriptor),
            None => Claimed::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn descriptor() -> Descriptor {
        Descriptor::new(
            crate::oci::MEDIA_TYPE_LAYER_GZIP.to_owned(),
            Digest::of(b"blob"),
            4,
        )
    }

    #[test]
    fn the_second_input_gets_the_first_ones_blob() {
        let in_flight = Arc::new(InFlight::default());
        let d = Digest::of(b"layer");
        let Claimed::Mine(claim) = in_flight.claim_or_wait(&d) else {
            panic!("the first input claims");
        };
        assert_eq!(claim.diff_id(), &d);
        let waiter = std::thread::spawn({
            let (in_flight, d) = (in_flight.clone(), d.clone());
            move || in_flight.claim_or_wait(&d)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second input waits");
        claim.resolve(descriptor());
        match waiter.join().unwrap() {
            Claimed::Published(got) => assert_eq!(got, descriptor()),
            _ => panic!("the second input reuses the blob"),
        }
        // Later inputs get it at once.
        assert!(matches!(in_flight.claim_or_wait(&d), Claimed::Published(_)));
    }

    #[test]
    fn a_dropped_claim_lets_the_others_publish_their_own() {
        let in_flight = Arc::new(InFlight::default());
        let d = Digest::of(b"layer");
        let claim = in_flight.claim_or_wait(&d);
        let waiter = std::thread::spawn({
            let (in_flight, d) = (in_flight.clone(), d.clone());
            move || in_flight.claim_or_wait(&d)
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(claim);
        assert!(matches!(waiter.join().unwrap(), Claimed::Abandoned));
        assert!(matches!(in_flight.claim_or_wait(&d), Claimed::Abandoned));
        // Another diff_id is not affected.
        assert!(matches!(
            in_flight.claim_or_wait(&Digest::of(b"other")),
            Claimed::Mine(_)
        ));
    }
}

//! The detectors' per-subject state: a slot per subject, found by name, removable.

use std::collections::HashMap;
use std::ops::{Index, IndexMut};
use std::sync::Arc;

/// States by subject name. Names are kept once, as `Arc<str>` (shared with a caller that passes
/// `Arc<str>` names); removing a subject moves the last slot into its place.
#[derive(Debug)]
pub(crate) struct Subjects<T> {
    index: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
    states: Vec<T>,
}

impl<T> Default for Subjects<T> {
    fn default() -> Self {
        Subjects { index: HashMap::new(), names: Vec::new(), states: Vec::new() }
    }
}

impl<T> Subjects<T> {
    /// The slot of `name`, if it is followed.
    pub(crate) fn slot(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Follows `name` (not yet followed) with `state`; returns its slot.
    pub(crate) fn add(&mut self, name: Arc<str>, state: T) -> usize {
        let slot = self.states.len();
        self.index.insert(name.clone(), slot);
        self.names.push(name);
        self.states.push(state);
        slot
    }

    /// Stops following `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        let Some(slot) = self.index.remove(name) else { return };
        self.states.swap_remove(slot);
        self.names.swap_remove(slot);
        if let Some(moved) = self.names.get(slot) {
            self.index.insert(moved.clone(), slot);
        }
    }

    /// A slot's name and state together (the state to change, the name to report).
    pub(crate) fn named_mut(&mut self, slot: usize) -> (&str, &mut T) {
        (&self.names[slot], &mut self.states[slot])
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub(crate) fn states_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.states.iter_mut()
    }
}

impl<T> Index<usize> for Subjects<T> {
    type Output = T;
    fn index(&self, slot: usize) -> &T {
        &self.states[slot]
    }
}

impl<T> IndexMut<usize> for Subjects<T> {
    fn index_mut(&mut self, slot: usize) -> &mut T {
        &mut self.states[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_subject_moves_the_last_into_its_slot() {
        let mut s: Subjects<u32> = Subjects::default();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(s.add(Arc::from(n), i as u32), i);
        }
        s.remove("a");
        assert_eq!((s.len(), s.slot("a"), s.slot("c")), (2, None, Some(0)));
        assert_eq!(s.named_mut(0), ("c", &mut 2));
        s.remove("zz");
        assert_eq!(s.len(), 2);
    }
}

//! The canonical host each spelling in a passive DNS answer names, worked out once per spelling.
//!
//! Answers name the same hosts over and over: a CDN edge or a parking address sits behind many
//! names, and the walks of different IOCs and the sharing counts page the same records. In the
//! benchmark's 700 observables, 26,528 records named 3,603 distinct ids, and normalising one cost
//! some 6,000 instructions against a hash and a probe to look it up.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foldhash::HashMap;

use crate::observable::{normalise, NormaliseOptions, Normalised};

/// Spellings remembered at most; then the memory starts again. At some 100 bytes a spelling this
/// bounds it near 2 MiB, and the hosts still being named are back after one normalising each.
const CAPACITY: usize = 16_384;

/// Spelling to canonical public host (`None`: not one).
type Memo = HashMap<Box<str>, Option<Box<str>>>;

/// Shared by the walks of one worker (clones share it); a spelling's canonical host never
/// changes, so what one walk worked out serves every other.
#[derive(Clone, Default)]
pub struct CanonicalNames(Arc<Mutex<Memo>>);

impl CanonicalNames {
    /// The canonical form of `id` if it is a public host: what [`normalise`] makes of it.
    pub fn public_host(&self, id: &str) -> Option<String> {
        if let Some(known) = self.names().get(id) {
            return known.as_deref().map(str::to_owned);
        }
        let canonical = normalised(id);
        let mut names = self.names();
        if names.len() >= CAPACITY {
            names.clear();
        }
        names.insert(id.into(), canonical.as_deref().map(Box::from));
        canonical
    }

    /// Held only for a lookup or an insert, never while normalising.
    fn names(&self) -> MutexGuard<'_, Memo> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `id` normalised, if that makes it a public host: the work the memory saves.
fn normalised(id: &str) -> Option<String> {
    normalise(id, None, &NormaliseOptions::default())
        .ok()
        .filter(Normalised::is_ready)
        .map(|ready| ready.observable().value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPELLINGS: [&str; 9] = [
        "CDN-1.Example.NET.",
        "cdn-1.example.net",
        "20.0.0.1",
        "10.0.0.1",
        "localhost",
        "xn--a.com",
        "bad host.example",
        "2606:4700::1111",
        "hxxp://evil[.]example/path",
    ];

    #[test]
    fn a_remembered_spelling_answers_as_normalising_it_again_would() {
        let names = CanonicalNames::default();
        for round in ["first", "remembered"] {
            for id in SPELLINGS {
                assert_eq!(names.public_host(id), normalised(id), "{round}: {id}");
            }
        }
        assert_eq!(names.names().len(), SPELLINGS.len());
    }

    #[test]
    fn memory_is_bounded_and_starts_again_when_full() {
        let names = CanonicalNames::default();
        for i in 0..CAPACITY + 10 {
            assert!(names.public_host(&format!("h{i}.example.com")).is_some());
        }
        assert_eq!(names.names().len(), 10);
        assert_eq!(
            names.public_host("h1.example.com").as_deref(),
            Some("h1.example.com")
        );
    }
}

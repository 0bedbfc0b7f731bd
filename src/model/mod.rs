//! The domain's types that cross layers: what a chaining walk finds (hits, evidence, factors,
//! fanouts), what is announced of it (attributions), the actors' intelligence profiles, and
//! what the walk and the profile sync ask of whatever keeps them ([`WalkCache`],
//! [`ProfileStore`]). `chain` produces and reads these, `store` writes and reads them back;
//! this module knows neither, nor Graph, nor the broker.

mod attribution;
mod cache;
mod hit;
mod profile;
mod storage;
mod walk;

pub use attribution::{Attribution, AttributionLink, EVENT_ARTIFACTS};
pub use cache::MemoryCache;
pub use hit::{ActorHit, Band, Evidence, Factor, Fanout};
pub use profile::{IntelProfileRecord, ProfileIndicatorRecord, ProfileRows};
pub use storage::{CachedLeads, LookupClaims, ProfileStore, StorageError, StorageFault, WalkCache};
pub use walk::{StoredLinks, WalkHits};

//! Work in flight in this process, followed by whoever needs the same thing meanwhile.
//!
//! The first to need a thing (a counterpart's reputation, an observable's enrichment) leads its
//! work; whoever needs it while that is under way follows: waits for the lead instead of doing
//! the same work again. The lead decides when its work is over (once its result is where later
//! comers will look for it: the cache, the committed rows) and may hand its followers the result
//! on the way. A lead that gives up (a failure, its task cancelled) releases its followers to do
//! the work themselves.
//!
//! Reputations: walks running at once often meet the same counterparts (shared hosting, CDNs,
//! popular name servers). The Postgres cache answers a counterpart only once its lookup has
//! finished and been saved; until then every other walk meeting it would miss the cache and ask
//! Graph again. That happens most under throttling, when each request waits for the limiter and
//! walks overlap the longest, which is when a request costs the most. A lookup stays open until
//! its lead has saved the answer to the cache, so a walk either follows it or, once it is
//! closed, finds the answer in the cache: no window in which a host is asked twice.
//!
//! Observables: a feed repeating an observable while its first message is still being enriched
//! would have it enriched twice; the repeat follows the first instead, and reads the store once
//! the first message's rows are committed (see `pipeline`).

use std::sync::{Arc, Mutex};

use foldhash::HashMap;
use tokio::sync::watch;

use crate::lane::Lane;
use crate::progress;

enum State<T> {
    Pending,
    Answered(T),
    /// The lead has no answer to give; followers do the work themselves.
    Released,
}

type Flight<T> = Arc<watch::Sender<State<T>>>;

/// What is in flight, and in which lane: work is shared within a lane only.
type Key = (Lane, String);

/// The work in flight, by key. Cheap to clone (shared).
pub struct InFlight<T> {
    // A std lock: held only to find, add or remove an entry, never across an await.
    flights: Arc<Mutex<HashMap<Key, Flight<T>>>>,
}

impl<T> Clone for InFlight<T> {
    fn clone(&self) -> Self {
        InFlight {
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            flights: Arc::default(),
        }
    }
}

impl<T> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("open", &self.len())
            .finish()
    }
}

/// What to do about one key.
pub enum Role<T> {
    /// Nobody is at work on it: lead, and answer the followers.
    Lead(Lead<T>),
    /// Somebody is: wait for the lead.
    Follow(Follower<T>),
}

impl<T: Clone> InFlight<T> {
    /// Lead the work on `key`, or follow the work in flight in the same lane (see
    /// [`Lane::current`]). Work is shared within a lane only: a live task following a bulk
    /// lead would wait as long as the bulk lead's requests wait for quota, behind the whole
    /// backlog; it does the work itself instead, at the cost of one duplicate lookup.
    pub fn join(&self, key: &str) -> Role<T> {
        let key = (Lane::current(), key.to_owned());
        let mut flights = self.flights.lock().expect("in-flight lock poisoned");
        if let Some(flight) = flights.get(&key) {
            return Role::Follow(Follower(flight.subscribe()));
        }
        let flight = Arc::new(watch::Sender::new(State::Pending));
        flights.insert(key.clone(), Arc::clone(&flight));
        Role::Lead(Lead {
            in_flight: self.clone(),
            key,
            flight,
        })
    }
}

#[cfg(test)]
impl<T> InFlight<T> {
    /// How many wait for the work on `key` in the current lane.
    pub(crate) fn followers(&self, key: &str) -> usize {
        let flights = self.flights.lock().expect("in-flight lock poisoned");
        flights
            .get(&(Lane::current(), key.to_owned()))
            .map_or(0, |flight| flight.receiver_count())
    }
}

/// A key whose work one does oneself, with its lead when the work is shared.
pub type Own<T> = (String, Option<Lead<T>>);

/// A key whose work somebody else leads.
pub type Following<T> = (String, Follower<T>);

/// Of `keys`, the work to do oneself and the work to follow somebody else's for (all one's own
/// when `in_flight` is `None`: nothing shared).
pub fn split<T: Clone>(
    in_flight: Option<&InFlight<T>>,
    keys: Vec<String>,
) -> (Vec<Own<T>>, Vec<Following<T>>) {
    let mut own = Vec::new();
    let mut follows = Vec::new();
    for key in keys {
        match in_flight.map(|f| f.join(&key)) {
            Some(Role::Follow(follower)) => follows.push((key, follower)),
            Some(Role::Lead(lead)) => own.push((key, Some(lead))),
            None => own.push((key, None)),
        }
    }
    (own, follows)
}

/// Wait for the work of `follows`, all at once, each marked as waiting at `point` (see
/// [`crate::progress`]); returns the answers, and the keys whose lead gave up without one, to
/// do oneself.
pub async fn follow<T: Clone>(
    follows: Vec<Following<T>>,
    point: &'static str,
) -> (Vec<(String, T)>, Vec<Own<T>>) {
    let followed =
        futures::future::join_all(follows.into_iter().map(|(key, follower)| async {
            (key, progress::wait_at(point, follower.answer()).await)
        }))
        .await;
    let mut answered = Vec::new();
    let mut released = Vec::new();
    for (key, answer) in followed {
        match answer {
            Some(value) => answered.push((key, value)),
            None => released.push((key, None)),
        }
    }
    (answered, released)
}

impl<T> InFlight<T> {
    /// Keys with work open now.
    pub fn len(&self) -> usize {
        self.flights.lock().expect("in-flight lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The lead of the work on one key. Dropping it closes the work: drop it once its result is
/// where later comers look. Dropped unanswered (a failure, a cancelled task), it releases its
/// followers.
pub struct Lead<T> {
    in_flight: InFlight<T>,
    key: Key,
    flight: Flight<T>,
}

impl<T> Lead<T> {
    /// Give the followers their answer now (they stop waiting; the work stays open).
    pub fn answer(&self, value: T) {
        self.flight.send_replace(State::Answered(value));
    }
}

impl<T> Drop for Lead<T> {
    fn drop(&mut self) {
        self.flight.send_if_modified(|state| {
            let pending = matches!(state, State::Pending);
            if pending {
                *state = State::Released;
            }
            pending
        });
        let mut flights = self
            .in_flight
            .flights
            .lock()
            .expect("in-flight lock poisoned");
        if flights
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// Waiting for somebody else's work.
pub struct Follower<T>(watch::Receiver<State<T>>);

impl<T: Clone> Follower<T> {
    /// The lead's answer, or `None` once the work is over without one (released, or closed
    /// without an answer: the result is then where the lead left it).
    pub async fn answer(mut self) -> Option<T> {
        let state = self
            .0
            .wait_for(|state| !matches!(state, State::Pending))
            .await;
        match state.as_deref() {
            Ok(State::Answered(value)) => Some(value.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Reputation;

    fn malicious() -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(90),
            rules: Arc::default(),
        }
    }

    fn lead(role: Role<Reputation>) -> Lead<Reputation> {
        match role {
            Role::Lead(lead) => lead,
            Role::Follow(_) => panic!("expected to lead"),
        }
    }

    fn follower(role: Role<Reputation>) -> Follower<Reputation> {
        match role {
            Role::Follow(follower) => follower,
            Role::Lead(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn walks_meeting_a_host_in_flight_get_the_leads_answer() {
        let in_flight = InFlight::<Reputation>::default();
        let first = lead(in_flight.join("52.1.0.1"));
        let second = follower(in_flight.join("52.1.0.1"));
        let other = lead(in_flight.join("52.1.0.2"));

        first.answer(malicious());
        // Answered but not yet saved: still followed, not led again.
        let third = follower(in_flight.join("52.1.0.1"));
        assert_eq!(second.answer().await, Some(malicious()));
        assert_eq!(third.answer().await, Some(malicious()));

        drop(first);
        drop(other);
        assert!(in_flight.is_empty(), "closed once saved");
        lead(in_flight.join("52.1.0.1"));
    }

    #[tokio::test]
    async fn a_lead_dropped_without_an_answer_releases_its_followers() {
        let in_flight = InFlight::<Reputation>::default();
        let first = lead(in_flight.join("52.1.0.1"));
        let waiting = tokio::spawn(follower(in_flight.join("52.1.0.1")).answer());
        drop(first);
        assert_eq!(waiting.await.unwrap(), None, "asks for itself");
        assert!(in_flight.is_empty());
    }
}

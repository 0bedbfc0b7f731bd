//! Reputation lookups in flight in this process, followed by every walk that needs them.
//!
//! Walks running at once often meet the same counterparts (shared hosting, CDNs, popular name
//! servers). The Postgres cache answers a counterpart only once its lookup has finished and been
//! saved; until then every other walk that meets it would miss the cache and ask Graph again.
//! That happens most under throttling, when each request waits for the limiter and walks overlap
//! the longest, which is when a request costs the most.
//!
//! So the first walk to need a host leads its lookup (the cache, then Graph) and the walks that
//! need it meanwhile follow: they wait for the lead's answer instead of asking. The lookup stays
//! open until the lead has saved the answer to the cache, so a walk either follows it or, once
//! it is closed, finds the answer in the cache: no window in which a host is asked twice.
//! A lead that gives up (over its walk's budget, a Graph failure, its walk cancelled) releases
//! its followers to ask for themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::enrich::Reputation;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Answered(Reputation),
    /// The lead has no answer to give; followers ask for themselves.
    Released,
}

type Flight = Arc<watch::Sender<State>>;

/// The lookups in flight, by canonical host. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    // A std lock: held only to find, add or remove an entry, never across an await.
    flights: Arc<Mutex<HashMap<String, Flight>>>,
}

/// What a walk does about one host.
pub(crate) enum Role {
    /// Nobody is looking it up: this walk does, and answers its followers.
    Lead(Lead),
    /// Another walk is: wait for its answer.
    Follow(Follower),
}

impl InFlight {
    /// Lead the lookup of `host`, or follow the one in flight.
    pub(crate) fn join(&self, host: &str) -> Role {
        let mut flights = self.flights.lock().expect("in-flight lock poisoned");
        if let Some(flight) = flights.get(host) {
            return Role::Follow(Follower(flight.subscribe()));
        }
        let flight = Arc::new(watch::Sender::new(State::Pending));
        flights.insert(host.to_owned(), Arc::clone(&flight));
        Role::Lead(Lead {
            in_flight: self.clone(),
            host: host.to_owned(),
            flight,
        })
    }

    /// Lookups open now.
    pub fn len(&self) -> usize {
        self.flights.lock().expect("in-flight lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The lead of one lookup. Dropping it closes the lookup: drop it once the answer is in the
/// cache. Dropped unanswered (a failure, a cancelled walk), it releases its followers.
pub(crate) struct Lead {
    in_flight: InFlight,
    host: String,
    flight: Flight,
}

impl Lead {
    /// Give the followers their answer (they stop waiting now, before the lead saves it).
    pub(crate) fn answer(&self, reputation: &Reputation) {
        self.flight
            .send_replace(State::Answered(reputation.clone()));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.flight.send_if_modified(|state| {
            let pending = *state == State::Pending;
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
            .get(&self.host)
            .is_some_and(|current| Arc::ptr_eq(current, &self.flight))
        {
            flights.remove(&self.host);
        }
    }
}

/// A walk waiting for another walk's lookup.
pub(crate) struct Follower(watch::Receiver<State>);

impl Follower {
    /// The lead's answer, or `None` if it released this walk to ask for itself.
    pub(crate) async fn answer(mut self) -> Option<Reputation> {
        let state = self.0.wait_for(|state| *state != State::Pending).await;
        match state.as_deref() {
            Ok(State::Answered(reputation)) => Some(reputation.clone()),
            // Released, or the lead vanished without a word (it cannot: its drop releases).
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malicious() -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(90),
            rules: Vec::new(),
        }
    }

    fn lead(role: Role) -> Lead {
        match role {
            Role::Lead(lead) => lead,
            Role::Follow(_) => panic!("expected to lead"),
        }
    }

    fn follower(role: Role) -> Follower {
        match role {
            Role::Follow(follower) => follower,
            Role::Lead(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn walks_meeting_a_host_in_flight_get_the_leads_answer() {
        let in_flight = InFlight::default();
        let first = lead(in_flight.join("52.1.0.1"));
        let second = follower(in_flight.join("52.1.0.1"));
        let other = lead(in_flight.join("52.1.0.2"));

        first.answer(&malicious());
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
        let in_flight = InFlight::default();
        let first = lead(in_flight.join("52.1.0.1"));
        let waiting = tokio::spawn(follower(in_flight.join("52.1.0.1")).answer());
        drop(first);
        assert_eq!(waiting.await.unwrap(), None, "asks for itself");
        assert!(in_flight.is_empty());
    }
}

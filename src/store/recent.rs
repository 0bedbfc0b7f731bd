//! The reputations and fanouts a worker read from its caches lately, kept in memory with when
//! Graph answered each, so that its walks do not read the same rows again.
//!
//! Walks share counterparts: a hosting address or a parking name stands behind many IOCs. In
//! the benchmark's 700 observables the walks read 10,138 reputation rows back from Postgres for
//! some 1,300 distinct hosts, each a row to find and its rules to decode. What is kept here is
//! only ever a row as Postgres gave it, timed from when Graph answered it and given only within
//! the asker's TTL, so an answer from memory is one the same read could have given: a row saved
//! since by another worker is as valid as the one kept. A miss is always read again, and a row
//! a walk saves is forgotten, for the next read to take the new one.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use crate::enrich::Reputation;
use crate::model::{CachedLeads, Fanout};

/// Hosts remembered at most; then the memory starts again. A reputation with its rules is a few
/// hundred bytes, so this bounds it near 4 MiB, and the hosts still being met come back with
/// the next read of each.
pub(super) const CAPACITY: usize = 8_192;

/// A value read from a cache, with its age in seconds (how long ago Graph answered it).
pub(super) type Aged<T> = HashMap<String, (f64, T)>;

#[derive(Default)]
struct Entry {
    reputation: Option<(Instant, Reputation)>,
    fanout: Option<(Instant, Fanout)>,
}

/// Keyed by host as stored (see `pg_text`).
pub(super) struct Recent {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl Recent {
    /// At most `capacity` hosts; zero remembers nothing, so that every read goes to Postgres.
    pub(super) fn new(capacity: usize) -> Recent {
        Recent {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The reputations of `hosts` Graph answered within `ttl`, and the hosts not known so.
    pub(super) fn reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> (HashMap<String, Reputation>, Vec<String>) {
        self.known(hosts, ttl, |entry| entry.reputation.as_ref())
    }

    /// The fanouts of `hosts` measured within `ttl`, and the hosts not known so.
    pub(super) fn fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> (HashMap<String, Fanout>, Vec<String>) {
        self.known(hosts, ttl, |entry| entry.fanout.as_ref())
    }

    /// The leads of `hosts` known within `ttl`, and the hosts whose reputation is not known so
    /// (for those, both are read again). The fanout of a host whose reputation is known is
    /// given when known: a walk reads a missing fanout again when it wants it.
    pub(super) fn leads(&self, hosts: &[String], ttl: Duration) -> (CachedLeads, Vec<String>) {
        let (reputations, missing) = self.reputations(hosts, ttl);
        let (mut fanouts, _) = self.fanouts(hosts, ttl);
        fanouts.retain(|host, _| reputations.contains_key(host));
        (
            CachedLeads {
                reputations,
                fanouts,
            },
            missing,
        )
    }

    /// Keep reputations read from the cache, each with its age.
    pub(super) fn keep_read_reputations(&self, read: &Aged<Reputation>) {
        self.keep(read, |entry, at, value| {
            entry.reputation = Some((at, value.clone()))
        });
    }

    /// Keep fanouts read from the cache, each with its age.
    pub(super) fn keep_read_fanouts(&self, read: &Aged<Fanout>) {
        self.keep(read, |entry, at, value| entry.fanout = Some((at, *value)));
    }

    /// Forget what is kept of `hosts`: newer values were just saved for them, to be read next.
    pub(super) fn forget<'h>(&self, hosts: impl IntoIterator<Item = &'h String>) {
        let mut entries = self.entries();
        for host in hosts {
            entries.remove(host);
        }
    }

    fn known<T: Clone>(
        &self,
        hosts: &[String],
        ttl: Duration,
        value: impl Fn(&Entry) -> Option<&(Instant, T)>,
    ) -> (HashMap<String, T>, Vec<String>) {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        if ttl.is_zero() {
            return (found, missing);
        }
        let entries = self.entries();
        for host in hosts {
            match entries.get(host).and_then(&value) {
                Some((at, value)) if at.elapsed() < ttl => {
                    found.insert(host.clone(), value.clone());
                }
                _ => missing.push(host.clone()),
            }
        }
        (found, missing)
    }

    fn keep<T>(&self, read: &Aged<T>, set: impl Fn(&mut Entry, Instant, &T)) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        for (host, (age, value)) in read {
            let Some(at) = answered(*age) else {
                continue;
            };
            if entries.len() >= self.capacity && !entries.contains_key(host) {
                entries.clear();
            }
            set(entries.entry(host.clone()).or_default(), at, value);
        }
    }

    /// Held only for lookups and inserts.
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The values of `read` without their ages.
pub(super) fn unaged<T>(read: Aged<T>) -> impl Iterator<Item = (String, T)> {
    read.into_iter().map(|(host, (_, value))| (host, value))
}

/// When Graph answered a value `age` seconds old; `None` if that is no duration (negative: a row
/// saved after the read began; not a number) or before any instant the clock can name.
fn answered(age: f64) -> Option<Instant> {
    let age = Duration::try_from_secs_f64(age).ok()?;
    Instant::now().checked_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn reputation(score: i32) -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(score),
            rules: Vec::new(),
        }
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn read<T>(rows: Vec<(&str, f64, T)>) -> Aged<T> {
        rows.into_iter()
            .map(|(host, age, value)| (host.to_owned(), (age, value)))
            .collect()
    }

    #[test]
    fn a_row_read_is_given_back_while_younger_than_the_ttl_asked_timed_from_graphs_answer() {
        let recent = Recent::new(CAPACITY);
        recent.keep_read_reputations(&read(vec![
            ("fresh.example", 10.0, reputation(90)),
            ("old.example", 2.0 * 3600.0, reputation(40)),
        ]));
        let asked = hosts(&["fresh.example", "old.example", "unknown.example"]);

        let (found, missing) = recent.reputations(&asked, HOUR);
        assert_eq!(
            found,
            HashMap::from_iter([(asked[0].clone(), reputation(90))])
        );
        assert_eq!(missing, hosts(&["old.example", "unknown.example"]));

        let (found, missing) = recent.reputations(&asked, 3 * HOUR);
        assert_eq!(found.len(), 2);
        assert_eq!(found["old.example"], reputation(40));
        assert_eq!(missing, hosts(&["unknown.example"]));

        // A zero TTL wants nothing cached, and nothing read either.
        assert_eq!(
            recent.reputations(&asked, Duration::ZERO),
            (HashMap::new(), vec![])
        );
    }

    #[test]
    fn leads_come_from_memory_only_for_hosts_whose_reputation_is_known() {
        let recent = Recent::new(CAPACITY);
        let wide = Fanout {
            names: 30,
            more: true,
        };
        recent.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(90))]));
        recent.keep_read_fanouts(&read(vec![
            ("a.example", 1.0, wide),
            ("b.example", 1.0, wide),
        ]));

        let (leads, missing) = recent.leads(&hosts(&["a.example", "b.example"]), HOUR);
        assert_eq!(leads.reputations.len(), 1);
        assert_eq!(
            leads.fanouts,
            HashMap::from_iter([("a.example".to_owned(), wide)])
        );
        // b's reputation is read again, and its fanout with it.
        assert_eq!(missing, hosts(&["b.example"]));
        let (fanouts, missing) = recent.fanouts(&hosts(&["a.example", "b.example"]), HOUR);
        assert_eq!(fanouts.len(), 2);
        assert!(missing.is_empty());
    }

    #[test]
    fn hosts_saved_anew_are_forgotten_and_read_again() {
        let recent = Recent::new(CAPACITY);
        recent.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(90))]));
        recent.forget(&hosts(&["a.example"]));
        let (found, missing) = recent.reputations(&hosts(&["a.example"]), HOUR);
        assert!(found.is_empty());
        assert_eq!(missing, hosts(&["a.example"]));
    }

    #[test]
    fn the_memory_is_bounded_and_a_zero_capacity_keeps_nothing() {
        let off = Recent::new(0);
        off.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(90))]));
        assert_eq!(off.reputations(&hosts(&["a.example"]), HOUR).1.len(), 1);

        let small = Recent::new(2);
        small.keep_read_reputations(&read(vec![
            ("a.example", 1.0, reputation(1)),
            ("b.example", 1.0, reputation(2)),
        ]));
        small.keep_read_reputations(&read(vec![("c.example", 1.0, reputation(3))]));
        assert!(small.entries().len() <= 2);
        let (found, _) = small.reputations(&hosts(&["c.example"]), HOUR);
        assert_eq!(found["c.example"], reputation(3));
    }

    #[test]
    fn an_age_that_is_no_duration_is_not_kept() {
        let recent = Recent::new(CAPACITY);
        recent.keep_read_reputations(&read(vec![
            ("not-a-number.example", f64::NAN, reputation(1)),
            // Saved by a transaction that began after the read's: it is read again.
            ("later.example", -0.5, reputation(1)),
        ]));
        assert!(recent.entries().is_empty());
    }
}

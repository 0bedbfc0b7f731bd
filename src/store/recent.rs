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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use crate::enrich::Reputation;
use crate::model::{CachedLeads, Fanout};

/// What the memory may hold, in bytes of hosts and values, each entry also charged for its place
/// in the map; then it starts again, and the hosts still being met come back with the next read
/// of each. A reputation with its rules is a few hundred bytes, so some ten thousand hosts fit.
pub(super) const BUDGET: usize = 4 << 20;

/// A value heavier than this is not kept: a few of them would fill the memory.
const HEAVIEST: usize = BUDGET / 64;

/// What an entry costs beyond its texts: its slot in the map, the times, the struct.
const ENTRY_BYTES: usize = 160;

/// A value read from a cache, with its age in seconds (how long ago Graph answered it).
pub(super) type Aged<T> = HashMap<String, (f64, T)>;

#[derive(Default)]
struct Entry {
    reputation: Option<(Instant, Reputation)>,
    fanout: Option<(Instant, Fanout)>,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, Entry>,
    /// Charged for every value kept since the memory last started, replaced or forgotten ones
    /// included: a generous count, which only makes it start again sooner.
    bytes: usize,
}

/// What the kept rows did, for `/metrics`.
#[derive(Debug, Default)]
pub struct KeptRowsStats {
    /// Hosts whose reputation or fanout was asked for and given from memory.
    pub answered: AtomicU64,
    /// Hosts asked for that were not kept, and so read from Postgres.
    pub read: AtomicU64,
    /// Times the memory filled its budget and started again.
    pub restarts: AtomicU64,
}

/// Keyed by host as stored (see `pg_text`).
pub(super) struct Recent {
    memory: Mutex<Memory>,
    budget: usize,
    stats: Arc<KeptRowsStats>,
}

impl Recent {
    /// At most `budget` bytes (see [`BUDGET`]); zero remembers nothing, so that every read goes
    /// to Postgres. What it does is counted in `stats`.
    pub(super) fn new(budget: usize, stats: Arc<KeptRowsStats>) -> Recent {
        Recent {
            memory: Mutex::new(Memory::default()),
            budget,
            stats,
        }
    }

    /// The reputations of `hosts` Graph answered within `ttl`, and the hosts not known so.
    pub(super) fn reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> (HashMap<String, Reputation>, Vec<String>) {
        self.counted(self.known(hosts, ttl, |entry| entry.reputation.as_ref()))
    }

    /// The fanouts of `hosts` measured within `ttl`, and the hosts not known so.
    pub(super) fn fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> (HashMap<String, Fanout>, Vec<String>) {
        self.counted(self.known(hosts, ttl, |entry| entry.fanout.as_ref()))
    }

    /// The leads of `hosts` known within `ttl`, and the hosts whose reputation is not known so
    /// (for those, both are read again). The fanout of a host whose reputation is known is
    /// given when known: a walk reads a missing fanout again when it wants it.
    pub(super) fn leads(&self, hosts: &[String], ttl: Duration) -> (CachedLeads, Vec<String>) {
        let (reputations, missing) = self.reputations(hosts, ttl);
        // Counted once per host, by its reputation: the fanouts ride along.
        let (mut fanouts, _) = self.known(hosts, ttl, |entry| entry.fanout.as_ref());
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
        self.keep(read, reputation_bytes, |entry, at, value| {
            entry.reputation = Some((at, value.clone()))
        });
    }

    /// Keep fanouts read from the cache, each with its age.
    pub(super) fn keep_read_fanouts(&self, read: &Aged<Fanout>) {
        self.keep(
            read,
            |_| 0,
            |entry, at, value| entry.fanout = Some((at, *value)),
        );
    }

    /// Forget what is kept of `hosts`: newer values were just saved for them, to be read next.
    pub(super) fn forget<'h>(&self, hosts: impl IntoIterator<Item = &'h String>) {
        let mut memory = self.memory();
        for host in hosts {
            memory.entries.remove(host);
        }
    }

    /// `lookup`, its hosts counted as answered or read.
    fn counted<T>(
        &self,
        lookup: (HashMap<String, T>, Vec<String>),
    ) -> (HashMap<String, T>, Vec<String>) {
        let (found, missing) = &lookup;
        self.stats
            .answered
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        self.stats
            .read
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        lookup
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
        let memory = self.memory();
        for host in hosts {
            match memory.entries.get(host).and_then(&value) {
                Some((at, value)) if at.elapsed() < ttl => {
                    found.insert(host.clone(), value.clone());
                }
                _ => missing.push(host.clone()),
            }
        }
        (found, missing)
    }

    /// Keep each value of `read` that weighs (`bytes`) at most [`HEAVIEST`], timed from its age.
    fn keep<T>(
        &self,
        read: &Aged<T>,
        bytes: impl Fn(&T) -> usize,
        set: impl Fn(&mut Entry, Instant, &T),
    ) {
        if self.budget == 0 {
            return;
        }
        let mut memory = self.memory();
        for (host, (age, value)) in read {
            let Some(at) = answered(*age) else {
                continue;
            };
            let weight = host.len() + bytes(value) + ENTRY_BYTES;
            if weight > HEAVIEST.min(self.budget) {
                continue;
            }
            if memory.bytes + weight > self.budget {
                *memory = Memory::default();
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
            memory.bytes += weight;
            set(memory.entries.entry(host.clone()).or_default(), at, value);
        }
    }

    /// Held only for lookups and inserts.
    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bytes of text a reputation holds, with a little for each rule's own place.
fn reputation_bytes(reputation: &Reputation) -> usize {
    let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    text(&reputation.classification)
        + reputation
            .rules
            .iter()
            .map(|rule| {
                64 + text(&rule.name)
                    + text(&rule.severity)
                    + text(&rule.related_details_url)
                    + rule.description.as_ref().map_or(0, json_bytes)
            })
            .sum::<usize>()
}

/// The bytes of text a JSON value holds, with a little for each node.
fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    16 + match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(json_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_bytes(v)).sum(),
        _ => 0,
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
    use crate::enrich::ReputationRule;

    const HOUR: Duration = Duration::from_secs(3600);

    fn reputation(score: i32) -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(score),
            rules: Arc::default(),
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
        let recent = Recent::new(BUDGET, Arc::default());
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
        let recent = Recent::new(BUDGET, Arc::default());
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
        let recent = Recent::new(BUDGET, Arc::default());
        recent.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(90))]));
        recent.forget(&hosts(&["a.example"]));
        let (found, missing) = recent.reputations(&hosts(&["a.example"]), HOUR);
        assert!(found.is_empty());
        assert_eq!(missing, hosts(&["a.example"]));
    }

    #[test]
    fn the_memory_is_bounded_in_bytes_and_a_zero_budget_keeps_nothing() {
        let off = Recent::new(0, Arc::default());
        off.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(90))]));
        assert_eq!(off.reputations(&hosts(&["a.example"]), HOUR).1.len(), 1);

        // Room for two entries of these: the third starts the memory again.
        let one = "a.example".len() + reputation_bytes(&reputation(1)) + ENTRY_BYTES;
        let stats = Arc::new(KeptRowsStats::default());
        let small = Recent::new(2 * one + 1, Arc::clone(&stats));
        small.keep_read_reputations(&read(vec![("a.example", 1.0, reputation(1))]));
        small.keep_read_reputations(&read(vec![("b.example", 1.0, reputation(2))]));
        assert_eq!(small.memory().entries.len(), 2);
        assert_eq!(stats.restarts.load(Ordering::Relaxed), 0);
        small.keep_read_reputations(&read(vec![("c.example", 1.0, reputation(3))]));
        assert_eq!(small.memory().entries.len(), 1);
        assert_eq!(stats.restarts.load(Ordering::Relaxed), 1);
        let (found, missing) = small.reputations(&hosts(&["a.example", "c.example"]), HOUR);
        assert_eq!(found["c.example"], reputation(3));
        assert_eq!(missing, hosts(&["a.example"]));
        assert_eq!(
            (
                stats.answered.load(Ordering::Relaxed),
                stats.read.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_reputation_too_heavy_for_the_memory_is_read_each_time_instead() {
        let recent = Recent::new(BUDGET, Arc::default());
        let mut heavy = reputation(90);
        heavy.rules = vec![
            ReputationRule {
                name: Some("rule".into()),
                description: Some(serde_json::Value::String("x".repeat(4096))),
                severity: None,
                related_details_url: None,
            };
            32
        ]
        .into();
        assert!(reputation_bytes(&heavy) > HEAVIEST);
        recent.keep_read_reputations(&read(vec![
            ("heavy.example", 1.0, heavy),
            ("light.example", 1.0, reputation(1)),
        ]));
        let (found, missing) =
            recent.reputations(&hosts(&["heavy.example", "light.example"]), HOUR);
        assert_eq!(found.len(), 1);
        assert_eq!(missing, hosts(&["heavy.example"]));
    }

    #[test]
    fn an_age_that_is_no_duration_is_not_kept() {
        let recent = Recent::new(BUDGET, Arc::default());
        recent.keep_read_reputations(&read(vec![
            ("not-a-number.example", f64::NAN, reputation(1)),
            // Saved by a transaction that began after the read's: it is read again.
            ("later.example", -0.5, reputation(1)),
        ]));
        assert!(recent.memory().entries.is_empty());
    }
}

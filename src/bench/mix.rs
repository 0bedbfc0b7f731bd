//! The benchmark's input: a deterministic, feed-like mix of observables.
//!
//! About 70 % names (registrable domains and hostnames under them) and 30 % addresses (IPv4,
//! some IPv6), drawn so that `distinct` of them are distinct values: every value of a pool of
//! `round(n * distinct)` appears once, the rest are repeats, half of them from a hot tenth of the
//! pool (feeds repeat their favourites), and the whole is shuffled. A few names are the
//! simulator's shared counterparts (`cdn-7.edge-example.net`), so an observable is sometimes a
//! counterpart another observable's walk already met; a few are `evil.` (malicious, actor hits)
//! or `unknown.` (Graph answers 404). About 5 % are written defanged (`contoso[.]com`) and 2 %
//! in upper case, as feeds do; they normalise to the same value.
//!
//! The same `(n, distinct, seed)` gives the same list on every machine (own PRNG, no `rand`).

use std::collections::HashSet;

// The simulator's shared counterpart names: `{prefix}-{i}.{domain}`.
use crate::sim::{NAME_DOMAINS, NAME_PREFIXES};

/// SplitMix64: tiny, fast and stable across versions and platforms.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: [&str; 40] = [
    "alpha", "bravo", "cobalt", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "jade",
    "kestrel", "lumen", "maple", "nimbus", "onyx", "pixel", "quartz", "raven", "sierra", "tundra",
    "umber", "vertex", "willow", "xenon", "yonder", "zephyr", "secure", "login", "update", "cloud",
    "portal", "office", "verify", "account", "billing", "support", "mail", "track", "share",
    "docs",
];
const TLDS: [&str; 12] = [
    "com", "net", "org", "io", "info", "xyz", "ru", "de", "top", "online", "co.uk", "biz",
];
const SUBS: [&str; 10] = [
    "www", "mail", "api", "cdn", "login", "vpn", "static", "m", "ns1", "files",
];
/// First octets of public IPv4 space (no private, shared, loopback, link-local, multicast,
/// documentation or benchmarking ranges are reachable from these).
const V4_FIRST: [u8; 20] = [
    13, 23, 31, 37, 45, 51, 62, 77, 85, 91, 104, 109, 138, 141, 151, 176, 185, 193, 195, 212,
];

fn registrable(rng: &mut SplitMix64) -> String {
    let first = rng.pick(&WORDS);
    let name = match rng.below(3) {
        0 => (*first).to_owned(),
        1 => format!("{first}-{}", rng.pick(&WORDS)),
        _ => format!("{first}{}", rng.below(1000)),
    };
    format!("{name}.{}", rng.pick(&TLDS))
}

/// One value of the pool, as a feed would write it canonically.
fn one_value(rng: &mut SplitMix64) -> String {
    let roll = rng.below(1000);
    match roll {
        // 70 % names.
        0..=34 => format!("evil.{}", registrable(rng)),
        35..=69 => format!("unknown.{}", registrable(rng)),
        70..=125 => {
            let i = rng.below(300) as usize;
            format!(
                "{}-{i}.{}",
                NAME_PREFIXES[i % NAME_PREFIXES.len()],
                NAME_DOMAINS[(i / NAME_PREFIXES.len()) % NAME_DOMAINS.len()]
            )
        }
        126..=449 => registrable(rng),
        450..=699 => format!("{}.{}", rng.pick(&SUBS), registrable(rng)),
        // 24 % IPv4.
        700..=939 => format!(
            "{}.{}.{}.{}",
            rng.pick(&V4_FIRST),
            rng.below(256),
            rng.below(256),
            1 + rng.below(254)
        ),
        // 6 % IPv6 (Google-, Cloudflare- and Microsoft-like public space).
        _ => match rng.below(3) {
            0 => format!(
                "2a00:1450:4001:{:x}::{:x}",
                0x800 + rng.below(0x40),
                1 + rng.below(0xfffe)
            ),
            1 => format!(
                "2606:4700:{:x}::{:x}",
                1 + rng.below(0xfff),
                1 + rng.below(0xfffe)
            ),
            _ => format!(
                "2603:10{:02x}:{:x}::{:x}",
                rng.below(256),
                1 + rng.below(0xfffe),
                1 + rng.below(0xfffe)
            ),
        },
    }
}

/// How many distinct values `n` observables with this `distinct` share hold.
pub fn distinct_count(n: usize, distinct: f64) -> usize {
    if n == 0 {
        return 0;
    }
    let share = if distinct.is_finite() {
        distinct.clamp(0.0, 1.0)
    } else {
        1.0
    };
    ((n as f64 * share).round() as usize).clamp(1, n)
}

/// `n` observables, `distinct_count(n, distinct)` of them distinct; see the module doc.
pub fn observable_mix(n: usize, distinct: f64, seed: u64) -> Vec<String> {
    let pool_size = distinct_count(n, distinct);
    let mut rng = SplitMix64::new(seed);
    let mut pool = Vec::with_capacity(pool_size);
    let mut seen = HashSet::with_capacity(pool_size);
    while pool.len() < pool_size {
        let value = one_value(&mut rng);
        if seen.insert(value.clone()) {
            pool.push(value);
        }
    }
    let hot = (pool_size / 10).max(1) as u64;
    let mut out = pool.clone();
    for _ in pool_size..n {
        let at = if rng.chance(0.5) {
            rng.below(hot)
        } else {
            rng.below(pool_size as u64)
        };
        out.push(pool[at as usize].clone());
    }
    // Fisher-Yates.
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    for value in &mut out {
        if rng.chance(0.05) {
            if let Some(dot) = value.rfind('.') {
                value.replace_range(dot..dot + 1, "[.]");
            }
        } else if rng.chance(0.02) {
            *value = value.to_uppercase();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observable::{normalise, Normalised, Observable, ObservableKind};

    #[test]
    fn the_mix_is_deterministic() {
        let a = observable_mix(2000, 0.8, 7);
        let b = observable_mix(2000, 0.8, 7);
        assert_eq!(a, b);
        assert_ne!(a, observable_mix(2000, 0.8, 8));
        // A longer run starts from the same pool draws but is its own shuffle; the size is exact.
        assert_eq!(observable_mix(10, 0.8, 7).len(), 10);
        assert!(observable_mix(0, 0.8, 7).is_empty());
        // Pinned, so that a change of the generator is a deliberate one (results compare across
        // runs only for the same input).
        let first = observable_mix(5, 1.0, 1);
        assert_eq!(
            first,
            [
                "mail.lumen.ru",
                "104.73.203.103",
                "login.vertex-garnet.de",
                "m.share-raven.online",
                "141.226.16.21"
            ]
        );
    }

    #[test]
    fn the_mix_is_feed_like_and_every_value_is_enrichable() {
        let n = 5000;
        let mix = observable_mix(n, 0.8, 1);
        let mut distinct = HashSet::new();
        let mut addresses = 0;
        for raw in &mix {
            let observable: Observable = match normalise(raw, None, &Default::default()) {
                Ok(Normalised::Ready(o)) => o,
                other => panic!("{raw} is not a ready observable: {other:?}"),
            };
            if matches!(
                observable.kind(),
                ObservableKind::Ipv4 | ObservableKind::Ipv6
            ) {
                addresses += 1;
            }
            distinct.insert(observable.value().to_owned());
        }
        assert_eq!(distinct.len(), distinct_count(n, 0.8));
        let share = addresses as f64 / n as f64;
        assert!((0.25..=0.35).contains(&share), "address share {share}");
        assert!(mix.iter().any(|v| v.contains("[.]")));
        assert!(mix.iter().any(|v| v.starts_with("evil.")));
    }

    #[test]
    fn distinct_counts_are_clamped() {
        assert_eq!(distinct_count(0, 0.8), 0);
        assert_eq!(distinct_count(10, 0.8), 8);
        assert_eq!(distinct_count(10, 0.0), 1);
        assert_eq!(distinct_count(10, 5.0), 10);
        assert_eq!(distinct_count(10, f64::NAN), 10);
    }
}

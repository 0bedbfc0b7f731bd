//! Deterministic synthetic threat-intelligence data.
//!
//! Everything here is a pure function of the host key (or the profile id): a stable FNV-1a hash
//! seeds a SplitMix64 generator, so the same host gets the same answer in every run and every
//! process, whatever the simulator's `seed` (that one only drives misbehaviour). The rules that
//! tests may rely on are listed in the module documentation of [`crate::sim`].

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use chrono::DateTime;
use serde_json::{json, Value};

pub(crate) const T_HOSTNAME: &str = "#microsoft.graph.security.hostname";
/// The casing Graph documentation shows once; about one hostname in ten uses it.
pub(crate) const T_HOSTNAME_ODD: &str = "#microsoft.graph.security.hostName";
pub(crate) const T_IP: &str = "#microsoft.graph.security.ipAddress";

/// The placeholder a Graph documentation example shows in a timestamp field.
pub(crate) const TS_PLACEHOLDER: &str = "String (timestamp)";

/// Threat actor groups named by `Cyber Threat Intelligence` reputation rules; each has an
/// intelligence profile of kind `actor`.
pub(crate) const ACTORS: [&str; 6] = [
    "Aqua Blizzard",
    "Forest Blizzard",
    "Mint Sandstorm",
    "Storm-0558",
    "Volt Typhoon",
    "Lace Tempest",
];

/// Size of the shared counterpart pools.
pub(crate) const POOL_V4: usize = 300;
pub(crate) const POOL_V6: usize = 60;
pub(crate) const POOL_NAMES: usize = 300;

// Time window of all synthetic timestamps: 2014-01-01 .. 2024-12-31 (fixed, never "now", so that
// answers do not change from one run to the next).
const T_START: i64 = 1_388_534_400;
const T_END: i64 = 1_735_603_200;

// ---------------------------------------------------------------------------------------------
// Hashing and PRNG
// ---------------------------------------------------------------------------------------------

/// FNV-1a, 64 bit: stable across processes and Rust versions, unlike std's `RandomState`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hash2(key: &str, salt: &str) -> u64 {
    // Hash "key#salt" rather than xoring two hashes, so that distinct salts give unrelated values.
    let mut s = String::with_capacity(key.len() + salt.len() + 1);
    s.push_str(key);
    s.push('#');
    s.push_str(salt);
    // FNV alone spreads near-identical keys (cdn-1..., cdn-2...) poorly over small moduli;
    // the SplitMix64 finaliser fixes that.
    Rng::new(fnv1a64(s.as_bytes())).next_u64()
}

/// SplitMix64: tiny, fast and fully specified, so the synthetic data never depends on the
/// algorithm a `rand` release happens to pick for `StdRng`.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn for_key(key: &str, salt: &str) -> Self {
        Rng(hash2(key, salt))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n == 0` gives 0 rather than panicking.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// `k` distinct indices in `0..len`: the `preferred` ones first (up to `n_pref` of them), then
/// others. Partial Fisher-Yates, so it never loops looking for unseen values.
fn sample_indices(
    rng: &mut Rng,
    len: usize,
    k: usize,
    preferred: &[usize],
    n_pref: usize,
) -> Vec<usize> {
    let k = k.min(len);
    let mut pref: Vec<usize> = preferred.to_vec();
    rng.shuffle(&mut pref);
    let mut out: Vec<usize> = pref.into_iter().take(n_pref.min(k)).collect();
    let taken: HashSet<usize> = out.iter().copied().collect();
    let mut rest: Vec<usize> = (0..len).filter(|i| !taken.contains(i)).collect();
    let need = k - out.len();
    for i in 0..need {
        let j = i + rng.below((rest.len() - i) as u64) as usize;
        rest.swap(i, j);
        out.push(rest[i]);
    }
    out
}

/// A deterministic record id (UUID v5 of a descriptive name).
fn record_id(kind: &str, host: &str, i: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("mdti-sim:{kind}:{host}:{i}").as_bytes(),
    )
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// Formats epoch seconds like Graph does, with or without milliseconds.
fn fmt_ts(secs: i64, millis: Option<u32>) -> String {
    let dt = DateTime::from_timestamp(secs, millis.unwrap_or(0) * 1_000_000).unwrap_or_default();
    match millis {
        Some(_) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

fn rand_secs(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo).max(1) as u64) as i64
}

fn ts(rng: &mut Rng, secs: i64) -> String {
    let millis = if rng.chance(0.5) {
        Some(rng.below(1000) as u32)
    } else {
        None
    };
    fmt_ts(secs, millis)
}

/// A (first seen, last seen) pair inside the fixed window, first <= last.
fn seen_pair(rng: &mut Rng) -> (i64, i64) {
    let first = rand_secs(rng, T_START, T_END - 86_400);
    let last = rand_secs(rng, first, (first + 3 * 365 * 86_400).min(T_END));
    (first, last)
}

// ---------------------------------------------------------------------------------------------
// Base64 (the crate has no base64 dependency; whois ids need it)
// ---------------------------------------------------------------------------------------------

pub(crate) fn base64(input: &[u8], url_safe: bool) -> String {
    let alphabet: &[u8; 64] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(alphabet[((n >> shift) & 63) as usize] as char);
            } else if !url_safe {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Host keys and the rules tests rely on
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostKind {
    Name,
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A host key as served: `id` is the decoded key exactly as the client sent it (Graph echoes
/// the key), `norm` the canonical form every synthetic value is derived from (lower case, no
/// trailing dot, IPs in their canonical text form).
#[derive(Debug, Clone)]
pub(crate) struct HostKey {
    pub id: String,
    pub norm: String,
    pub kind: HostKind,
}

impl HostKey {
    /// `None` for keys that cannot name a host (empty, illegal characters, URLs): they get 404.
    pub(crate) fn parse(id: &str) -> Option<HostKey> {
        if let Ok(ip) = id.parse::<IpAddr>() {
            let kind = match ip {
                IpAddr::V4(v4) => HostKind::V4(v4),
                IpAddr::V6(v6) => HostKind::V6(v6),
            };
            return Some(HostKey {
                id: id.to_string(),
                norm: ip.to_string(),
                kind,
            });
        }
        let norm = id.trim_end_matches('.').to_ascii_lowercase();
        let ok = !norm.is_empty()
            && norm.len() <= 253
            && norm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !norm.split('.').any(str::is_empty);
        ok.then(|| HostKey {
            id: id.to_string(),
            norm,
            kind: HostKind::Name,
        })
    }

    fn first_label(&self) -> &str {
        match self.kind {
            HostKind::Name => self.norm.split('.').next().unwrap_or(""),
            _ => "",
        }
    }

    /// Unknown to the simulated MDTI: 404 on every `hosts/{id}*` endpoint.
    pub(crate) fn is_unknown(&self) -> bool {
        self.first_label() == "unknown" || self.norm.contains("nxdomain")
    }

    /// Popular hosts have hundreds of passive DNS records, host pairs and subdomains.
    pub(crate) fn is_popular(&self) -> bool {
        self.first_label() == "popular" || hash2(&self.norm, "popular").is_multiple_of(50)
    }

    pub(crate) fn is_malicious(&self) -> bool {
        self.first_label() == "evil" || pool().malicious.contains(&self.norm)
    }

    fn is_ip(&self) -> bool {
        !matches!(self.kind, HostKind::Name)
    }

    fn type_name(&self) -> &'static str {
        if self.is_ip() {
            T_IP
        } else {
            hostname_type(&self.norm)
        }
    }
}

/// `@odata.type` of a hostname; about one in ten uses the odd casing `hostName`.
fn hostname_type(norm: &str) -> &'static str {
    if hash2(norm, "casing").is_multiple_of(10) {
        T_HOSTNAME_ODD
    } else {
        T_HOSTNAME
    }
}

fn artifact_type(norm: &str) -> &'static str {
    if norm.parse::<IpAddr>().is_ok() {
        T_IP
    } else {
        hostname_type(norm)
    }
}

/// The actor group a malicious host is attributed to.
pub(crate) fn actor_of(norm: &str) -> &'static str {
    ACTORS[(hash2(norm, "actor") % ACTORS.len() as u64) as usize]
}

// ---------------------------------------------------------------------------------------------
// Shared counterpart pool
// ---------------------------------------------------------------------------------------------

/// Counterparts shared by all hosts, so that passive DNS and host pairs of different hosts
/// overlap (which is what makes chaining and caching interesting).
pub(crate) struct Pool {
    pub v4: Vec<String>,
    pub v6: Vec<String>,
    pub names: Vec<String>,
    /// Indices (per list) of the malicious entries, about 10 % of each list.
    mal_v4: Vec<usize>,
    mal_v6: Vec<usize>,
    mal_names: Vec<usize>,
    pub malicious: HashSet<String>,
}

pub(crate) const NAME_PREFIXES: [&str; 10] = [
    "cdn", "edge", "static", "img", "api", "login", "update", "sync", "mail", "portal",
];
pub(crate) const NAME_DOMAINS: [&str; 6] = [
    "edge-example.net",
    "fastcache-demo.com",
    "cloudrelay-sim.io",
    "contoso-cdn.net",
    "fabrikam-mail.com",
    "northwind-apps.org",
];

pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(build_pool)
}

fn build_pool() -> Pool {
    let (v4, v6, names) = (pool_v4(), pool_v6(), pool_names());
    let mal = |list: &[String]| -> Vec<usize> {
        (0..list.len())
            .filter(|&i| hash2(&list[i], "malicious").is_multiple_of(10))
            .collect()
    };
    let (mal_v4, mal_v6, mal_names) = (mal(&v4), mal(&v6), mal(&names));
    let malicious = mal_v4
        .iter()
        .map(|&i| v4[i].clone())
        .chain(mal_v6.iter().map(|&i| v6[i].clone()))
        .chain(mal_names.iter().map(|&i| names[i].clone()))
        .collect();
    Pool {
        v4,
        v6,
        names,
        mal_v4,
        mal_v6,
        mal_names,
        malicious,
    }
}

fn pool_v4() -> Vec<String> {
    // IPv4 in 20.0.0.0/8 and 40.0.0.0/8 only: public (Microsoft) space, never private, reserved
    // or documentation ranges. Last octet 1..=254 avoids network/broadcast-looking addresses.
    let mut seen = HashSet::new();
    let mut v4 = Vec::with_capacity(POOL_V4);
    let mut i = 0u64;
    while v4.len() < POOL_V4 {
        let h = hash2(&format!("pool-v4-{i}"), "ip");
        i += 1;
        let a = if h & 1 == 0 { 20 } else { 40 };
        let ip = Ipv4Addr::new(
            a,
            (h >> 8) as u8,
            (h >> 16) as u8,
            1 + ((h >> 24) % 254) as u8,
        );
        if seen.insert(ip) {
            v4.push(ip.to_string());
        }
    }
    v4
}

fn pool_v6() -> Vec<String> {
    // IPv6 in 2603:1000::/24 (Microsoft), never 2001:db8::/32 (documentation).
    let mut v6 = Vec::with_capacity(POOL_V6);
    let mut seen6 = HashSet::new();
    let mut i = 0u64;
    while v6.len() < POOL_V6 {
        let h = hash2(&format!("pool-v6-{i}"), "ip");
        i += 1;
        let ip = Ipv6Addr::new(
            0x2603,
            0x1000 | ((h & 0xff) as u16),
            (h >> 8) as u16,
            (h >> 24) as u16,
            0,
            0,
            0,
            1 + ((h >> 40) as u16 % 0xfffe),
        );
        if seen6.insert(ip) {
            v6.push(ip.to_string());
        }
    }
    v6
}

fn pool_names() -> Vec<String> {
    (0..POOL_NAMES)
        .map(|i| {
            format!(
                "{}-{i}.{}",
                NAME_PREFIXES[i % NAME_PREFIXES.len()],
                NAME_DOMAINS[(i / NAME_PREFIXES.len()) % NAME_DOMAINS.len()]
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shared hosts
// ---------------------------------------------------------------------------------------------

/// A counterpart that thousands of unrelated names resolve to (a CDN edge, a parking host, a
/// public resolver): a link through it says little about who runs the names behind it, which
/// is what a confidence discount for shared infrastructure needs to be tested against.
pub(crate) struct SharedDef {
    pub host: &'static str,
    /// The actor its `Cyber Threat Intelligence` rule names. Shared hosts are flagged because
    /// malicious names also sit behind them, yet no profile lists them as indicators.
    pub actor: Option<&'static str>,
    classification: &'static str,
    /// Distinctive suffix of the first label of the generated names behind it
    /// (`shop17-edgecust.com`), so a name can be traced back to its host.
    tag: &'static str,
    /// Autonomous system (number, name, organisation, hosting provider) and country of an
    /// address; the generic draw would put a public resolver at a random hoster.
    network: Option<(Asn, &'static str)>,
}

/// The shared hosts, in a fixed order (their index is what names hash to).
pub(crate) const SHARED: [SharedDef; 4] = [
    // A CDN edge.
    SharedDef {
        host: "104.18.32.7",
        actor: Some("Forest Blizzard"),
        classification: "malicious",
        tag: "edgecust",
        network: Some((
            (13335, "CLOUDFLARENET", "Cloudflare, Inc.", "Cloudflare"),
            "US",
        )),
    },
    // A parking host.
    SharedDef {
        host: "185.53.178.14",
        actor: Some("Lace Tempest"),
        classification: "malicious",
        tag: "parked",
        network: Some((
            (
                61969,
                "TEAMINTERNET-AS",
                "Team Internet AG",
                "Team Internet",
            ),
            "DE",
        )),
    },
    // A public resolver.
    SharedDef {
        host: "8.8.8.8",
        actor: None,
        classification: "neutral",
        tag: "resolvq",
        network: Some(((15169, "GOOGLE", "Google LLC", "Google Cloud"), "US")),
    },
    // A CDN name.
    SharedDef {
        host: "edge.sharedcdn-sim.net",
        actor: Some("Mint Sandstorm"),
        classification: "suspicious",
        tag: "cdnalias",
        network: None,
    },
];

/// One name in `SHARED_EVERY` resolves to a shared host.
const SHARED_EVERY: u64 = 4;
/// Names listed behind one shared host, pool names included.
const SHARED_NAMES: (u64, u64) = (1500, 4000);
// First labels and TLDs of the generated names: none of them is `unknown`, `evil`, `popular`
// or `placeholder`, whose hosts follow their own rules, and every TLD is an ordinary public one.
const SHARED_WORDS: [&str; 12] = [
    "shop", "news", "blog", "travel", "games", "photo", "recipes", "garden", "music", "sports",
    "health", "events",
];
const SHARED_TLDS: [&str; 5] = ["com", "net", "org", "info", "biz"];

pub(crate) fn shared_def(norm: &str) -> Option<&'static SharedDef> {
    SHARED.iter().find(|d| d.host == norm)
}

/// The `i`-th generated name behind shared host `k`: each one a registrable domain of its own,
/// so the names behind a host are unrelated.
fn shared_generated_name(k: usize, i: usize) -> String {
    format!(
        "{}{i}-{}.{}",
        SHARED_WORDS[i % SHARED_WORDS.len()],
        SHARED[k].tag,
        SHARED_TLDS[(i / SHARED_WORDS.len()) % SHARED_TLDS.len()]
    )
}

/// How many names shared host `k` lists in all (pool names behind it included).
fn shared_total(k: usize) -> usize {
    let mut rng = Rng::for_key(SHARED[k].host, "sharedNames");
    rng.range(SHARED_NAMES.0, SHARED_NAMES.1) as usize
}

/// The pool names that resolve to each shared host; they lead its listing, so the reverse view
/// of a pool name's extra record holds.
fn shared_pool_names() -> &'static [Vec<String>] {
    static BEHIND: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    BEHIND.get_or_init(|| {
        let mut behind = vec![Vec::new(); SHARED.len()];
        for name in &pool().names {
            if let Some(k) = shared_index_by_hash(name) {
                behind[k].push(name.clone());
            }
        }
        behind
    })
}

fn shared_index_by_hash(norm: &str) -> Option<usize> {
    hash2(norm, "shared")
        .is_multiple_of(SHARED_EVERY)
        .then(|| (hash2(norm, "sharedHost") % SHARED.len() as u64) as usize)
}

/// Which shared host a name resolves to: the one it is listed behind if it is a generated
/// name, else one name in [`SHARED_EVERY`] by hash. Never for addresses, unknown names or the
/// shared hosts themselves.
pub(crate) fn shared_index(key: &HostKey) -> Option<usize> {
    if key.is_ip() || key.is_unknown() || shared_def(&key.norm).is_some() {
        return None;
    }
    generated_owner(&key.norm).or_else(|| shared_index_by_hash(&key.norm))
}

/// The shared host a generated name (`shop17-edgecust.com`) was made for, if it is one.
fn generated_owner(norm: &str) -> Option<usize> {
    let (label, _tld) = norm.split_once('.')?;
    SHARED.iter().enumerate().find_map(|(k, def)| {
        let stem = label.strip_suffix(def.tag)?.strip_suffix('-')?;
        let digits = stem.trim_start_matches(|c: char| !c.is_ascii_digit());
        let i: usize = digits.parse().ok()?;
        let generated = i < shared_total(k).saturating_sub(shared_pool_names()[k].len());
        (generated && shared_generated_name(k, i) == norm).then_some(k)
    })
}

/// The `i`-th name listed behind shared host `k`.
fn shared_listed_name(k: usize, i: usize) -> String {
    let pool_names = &shared_pool_names()[k];
    match pool_names.get(i) {
        Some(name) => name.clone(),
        None => shared_generated_name(k, i - pool_names.len()),
    }
}

/// The passive DNS of a shared host, built record by record: thousands of records per host,
/// and a page needs only its own.
pub(crate) struct SharedListing<'a> {
    key: &'a HostKey,
    k: usize,
    reverse: bool,
}

impl SharedListing<'_> {
    pub(crate) fn len(&self) -> usize {
        shared_total(self.k)
    }

    pub(crate) fn record(&self, i: usize) -> Value {
        let kind = if self.reverse {
            "passiveDnsReverse"
        } else {
            "passiveDns"
        };
        // One generator per record, so any record can be built without the ones before it.
        let mut rng = Rng::for_key(&format!("{}#{i}", self.key.norm), kind);
        let record_type = match self.key.kind {
            HostKind::V4(_) => "A",
            HostKind::V6(_) => "AAAA",
            HostKind::Name => "CNAME",
        };
        let name = shared_listed_name(self.k, i);
        pdns_record(&mut rng, kind, self.key, i, record_type, &name)
    }
}

/// `Some` for a shared host: both of its passive DNS views list the names behind it.
pub(crate) fn shared_listing(key: &HostKey, reverse: bool) -> Option<SharedListing<'_>> {
    let k = SHARED.iter().position(|d| d.host == key.norm)?;
    Some(SharedListing { key, k, reverse })
}

/// The shared hosts and the actor each one's reputation names.
pub(crate) fn shared_hosts() -> Vec<(String, Option<&'static str>)> {
    SHARED
        .iter()
        .map(|d| (d.host.to_string(), d.actor))
        .collect()
}

/// How many distinct names a shared host lists, `None` for any other host.
pub(crate) fn shared_host_names(host: &str) -> Option<usize> {
    let key = HostKey::parse(host)?;
    SHARED
        .iter()
        .position(|d| d.host == key.norm)
        .map(shared_total)
}

/// The shared host `name` resolves to (an extra forward passive DNS record), if any.
pub(crate) fn shared_host_for(name: &str) -> Option<String> {
    let key = HostKey::parse(name)?;
    shared_index(&key).map(|k| SHARED[k].host.to_string())
}

// ---------------------------------------------------------------------------------------------
// hosts/{id}
// ---------------------------------------------------------------------------------------------

const REGISTRARS: [(&str, &str); 5] = [
    ("Fabrikam Domains, Inc.", "whois.fabrikam-domains.com"),
    ("Northwind Names LLC", "whois.northwindnames.net"),
    (
        "Woodgrove Registry Services",
        "whois.woodgrove-registry.com",
    ),
    ("Tailspin Registrar Ltd", "whois.tailspin-registrar.co.uk"),
    ("Contoso Registrar GmbH", "whois.contoso-registrar.de"),
];
const ORGS: [&str; 7] = [
    "Contoso Ltd.",
    "Fabrikam, Inc.",
    "Northwind Traders",
    "Woodgrove Bank",
    "Privacy Protect, LLC",
    "REDACTED FOR PRIVACY",
    "Litware, Inc.",
];
/// An autonomous system: (number, name, organization, hosting provider).
type Asn = (u32, &'static str, &'static str, &'static str);
const ASES: [Asn; 6] = [
    (
        8075,
        "MICROSOFT-CORP-MSN-AS-BLOCK",
        "Microsoft Corporation",
        "Microsoft Azure",
    ),
    (
        16509,
        "AMAZON-02",
        "Amazon.com, Inc.",
        "Amazon Web Services",
    ),
    (13335, "CLOUDFLARENET", "Cloudflare, Inc.", "Cloudflare"),
    (24940, "HETZNER-AS", "Hetzner Online GmbH", "Hetzner"),
    (
        14061,
        "DIGITALOCEAN-ASN",
        "DigitalOcean, LLC",
        "DigitalOcean",
    ),
    (16276, "OVH", "OVH SAS", "OVHcloud"),
];
const IP_COUNTRIES: [&str; 6] = ["US", "NL", "DE", "GB", "FR", "SG"];

pub(crate) fn host_entity(key: &HostKey) -> Value {
    let mut rng = Rng::for_key(&key.norm, "host");
    let (first, last) = seen_pair(&mut rng);
    let mut v = json!({
        "@odata.type": key.type_name(),
        "id": key.id,
        "firstSeenDateTime": ts(&mut rng, first),
        "lastSeenDateTime": ts(&mut rng, last),
    });
    match key.kind {
        HostKind::Name => {
            let registrar = rng.chance(0.8).then(|| rng.pick(&REGISTRARS).0);
            let registrant = rng.chance(0.7).then(|| *rng.pick(&ORGS));
            v["registrar"] = json!(registrar);
            v["registrant"] = json!(registrant);
        }
        HostKind::V4(_) | HostKind::V6(_) => {
            // The shared pools live in Microsoft space: say so, like a real lookup would.
            let microsoft = key.norm.starts_with("20.")
                || key.norm.starts_with("40.")
                || key.norm.starts_with("2603:");
            let ((number, name, org, provider), country) =
                match shared_def(&key.norm).and_then(|d| d.network) {
                    Some(network) => network,
                    None if microsoft => (ASES[0], "US"),
                    None => (*rng.pick(&ASES), *rng.pick(&IP_COUNTRIES)),
                };
            v["autonomousSystem"] = json!({
                "name": name,
                "number": number,
                "organization": org,
                "value": format!("AS{number}"),
            });
            v["countryOrRegion"] = json!(country);
            v["hostingProvider"] = json!(rng.chance(0.9).then_some(provider));
            v["netblock"] = json!(netblock(key.kind));
        }
    }
    v
}

fn netblock(kind: HostKind) -> Option<String> {
    match kind {
        HostKind::V4(ip) => {
            let o = ip.octets();
            Some(format!("{}.{}.0.0/16", o[0], o[1]))
        }
        HostKind::V6(ip) => {
            let s = ip.segments();
            Some(format!(
                "{}/32",
                Ipv6Addr::new(s[0], s[1], 0, 0, 0, 0, 0, 0)
            ))
        }
        HostKind::Name => None,
    }
}

// ---------------------------------------------------------------------------------------------
// hosts/{id}/whois
// ---------------------------------------------------------------------------------------------

// (city, state, postal code, spellings of the country as free text)
const PLACES: [(&str, Option<&str>, &str, &[&str]); 6] = [
    (
        "Redmond",
        Some("WA"),
        "98052",
        &["US", "united states", "United States of America"],
    ),
    ("Berlin", Some("BE"), "10115", &["DE", "germany"]),
    ("Amsterdam", Some("NH"), "1012 AB", &["NL", "Netherlands"]),
    ("London", None, "EC1A 1BB", &["GB", "united kingdom"]),
    ("Toronto", Some("ON"), "M5H 2N2", &["CA", "Canada"]),
    ("Tokyo", None, "100-0001", &["JP", "japan"]),
];
const CONTACT_NAMES: [&str; 6] = [
    "Domain Administrator",
    "Hostmaster",
    "Abuse Desk",
    "REDACTED FOR PRIVACY",
    "Jane Doe",
    "Network Operations",
];
const DOMAIN_STATUSES: [&str; 6] = [
    "clientDeleteProhibited",
    "clientTransferProhibited",
    "clientUpdateProhibited",
    "serverDeleteProhibited",
    "serverTransferProhibited",
    "ok",
];
const DNS_PROVIDERS: [&str; 4] = [
    "dns-example.net",
    "contoso-dns.com",
    "woodgrove-ns.org",
    "nsone-sim.net",
];

/// A telephone number in one of the formats seen in whois (no format is guaranteed). The
/// 555-01xx block is reserved for fiction.
fn phone(rng: &mut Rng) -> String {
    let n = rng.below(100);
    match rng.below(3) {
        0 => format!("+1.42555501{n:02}"),
        1 => format!("(425) 555-01{n:02}"),
        _ => format!("+44 20 7946 0{n:03}"),
    }
}

fn contact(rng: &mut Rng, role: &str, domain: &str) -> Value {
    let address = if rng.chance(0.2) {
        Value::Null
    } else {
        let (city, state, postal, countries) = *rng.pick(&PLACES);
        let country = *rng.pick(countries);
        let street = format!("{} Example Street", 1 + rng.below(999));
        // Any address field may be null.
        let mut field = |v: Value| if rng.chance(0.15) { Value::Null } else { v };
        json!({
            "city": field(json!(city)),
            "countryOrRegion": field(json!(country)),
            "postalCode": field(json!(postal)),
            "state": field(json!(state)),
            "street": field(json!(street)),
        })
    };
    json!({
        "email": if rng.chance(0.1) { Value::Null } else { json!(format!("{role}@{domain}")) },
        "fax": if rng.chance(0.7) { Value::Null } else { json!(phone(rng)) },
        "name": rng.pick(&CONTACT_NAMES),
        "organization": if rng.chance(0.15) { Value::Null } else { json!(rng.pick(&ORGS)) },
        "telephone": if rng.chance(0.1) { Value::Null } else { json!(phone(rng)) },
        "address": address,
    })
}

/// The record's dates, each missing now and then, and the one (if any) that carries the
/// documented placeholder.
fn whois_dates(rng: &mut Rng, key: &HostKey) -> WhoisDates {
    let registration = rand_secs(rng, T_START - 10 * 365 * 86_400, T_END - 365 * 86_400);
    let expiration = registration + (1 + rng.below(10) as i64) * 365 * 86_400;
    let (first, last) = seen_pair(rng);
    let updated = rand_secs(rng, registration, T_END);
    let mut dates = [
        ("registrationDateTime", Some(registration)),
        ("expirationDateTime", Some(expiration)),
        ("firstSeenDateTime", Some(first)),
        ("lastSeenDateTime", Some(last)),
        ("lastUpdateDateTime", Some(updated)),
    ];
    for d in dates.iter_mut() {
        if rng.chance(0.1) {
            d.1 = None;
        }
    }
    // A small share of records (1 in 25, and every host whose first label is `placeholder`)
    // carries the documented placeholder in one date field, to exercise tolerant parsing.
    let placeholder_field = (hash2(&key.norm, "placeholder").is_multiple_of(25)
        || key.first_label() == "placeholder")
        .then(|| dates[rng.below(dates.len() as u64) as usize].0);
    WhoisDates {
        dates,
        placeholder_field,
    }
}

struct WhoisDates {
    dates: [(&'static str, Option<i64>); 5],
    placeholder_field: Option<&'static str>,
}

/// The registrar's name and WHOIS server: a regional registry for an address.
fn registrar(rng: &mut Rng, key: &HostKey) -> (&'static str, &'static str) {
    if key.is_ip() {
        *rng.pick(&[
            ("ARIN", "whois.arin.net"),
            ("RIPE NCC", "whois.ripe.net"),
            ("APNIC", "whois.apnic.net"),
        ])
    } else {
        *rng.pick(&REGISTRARS)
    }
}

/// One to three domain statuses, joined the way some registries do and others don't.
fn domain_statuses(rng: &mut Rng) -> String {
    let status_sep = *rng.pick(&[", ", ",", " "]);
    let n_status = rng.range(1, 4) as usize;
    sample_indices(rng, DOMAIN_STATUSES.len(), n_status, &[], 0)
        .into_iter()
        .map(|i| DOMAIN_STATUSES[i])
        .collect::<Vec<_>>()
        .join(status_sep)
}

/// Every contact role, each missing now and then.
fn add_contacts(rng: &mut Rng, v: &mut Value, contact_domain: &str) {
    for role in [
        "abuse",
        "admin",
        "billing",
        "noc",
        "registrant",
        "registrar",
        "technical",
        "zone",
    ] {
        v[role] = if rng.chance(0.3) {
            Value::Null
        } else {
            contact(rng, role, contact_domain)
        };
    }
}

/// Two to four name servers of one DNS provider, with when each was seen.
fn nameservers(rng: &mut Rng) -> Vec<Value> {
    let provider = *rng.pick(&DNS_PROVIDERS);
    (1..=rng.range(2, 4))
        .map(|k| {
            let (f, l) = seen_pair(rng);
            json!({
                "firstSeenDateTime": ts(rng, f),
                "lastSeenDateTime": ts(rng, l),
                "host": {"id": format!("ns{k}.{provider}")},
            })
        })
        .collect()
}

/// The registry's text of the record, with the same dates as its fields.
fn raw_whois_text(
    v: &Value,
    key: &HostKey,
    number: u64,
    (registrar_name, whois_server): (&str, &str),
    statuses: &str,
) -> String {
    let ns_text: String = v["nameservers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["host"]["id"].as_str())
        .map(|n| format!("Name Server: {}\n", n.to_ascii_uppercase()))
        .collect();
    let text_date = |f: &str| v[f].as_str().unwrap_or("").to_string();
    format!(
        "Domain Name: {}\nRegistry Domain ID: {number}\nRegistrar WHOIS Server: {whois_server}\n\
         Updated Date: {}\nCreation Date: {}\nRegistry Expiry Date: {}\nRegistrar: {registrar_name}\n\
         Domain Status: {statuses}\n{ns_text}>>> Last update of WHOIS database: {} <<<\n",
        key.norm.to_ascii_uppercase(),
        text_date("lastUpdateDateTime"),
        text_date("registrationDateTime"),
        text_date("expirationDateTime"),
        text_date("lastSeenDateTime"),
    )
}

pub(crate) fn whois(key: &HostKey) -> Value {
    let mut rng = Rng::for_key(&key.norm, "whois");
    let number = hash2(&key.norm, "whois-number");
    let id = base64(format!("{}$${number}", key.id).as_bytes(), false);
    let WhoisDates {
        dates,
        placeholder_field,
    } = whois_dates(&mut rng, key);
    let registrar = registrar(&mut rng, key);
    let statuses = domain_statuses(&mut rng);

    let contact_domain = registrar.1.trim_start_matches("whois.");
    let mut v = json!({
        "id": id,
        "whoisServer": registrar.1,
        "domainStatus": statuses,
        "host": {"@odata.type": key.type_name(), "id": key.id},
    });
    for (name, secs) in dates {
        v[name] = if Some(name) == placeholder_field {
            json!(TS_PLACEHOLDER)
        } else {
            json!(secs.map(|s| ts(&mut rng, s)))
        };
    }
    add_contacts(&mut rng, &mut v, contact_domain);
    v["nameservers"] = Value::Array(nameservers(&mut rng));
    v["rawWhoisText"] = json!(raw_whois_text(&v, key, number, registrar, &statuses));
    v
}

// ---------------------------------------------------------------------------------------------
// Passive DNS
// ---------------------------------------------------------------------------------------------

fn pdns_record(
    rng: &mut Rng,
    kind: &str,
    key: &HostKey,
    i: usize,
    record_type: &str,
    artifact: &str,
) -> Value {
    let (first, last) = seen_pair(rng);
    let collected = (last + rng.below(30 * 86_400) as i64).min(T_END);
    json!({
        "id": record_id(kind, &key.norm, i),
        "collectedDateTime": ts(rng, collected),
        "firstSeenDateTime": ts(rng, first),
        "lastSeenDateTime": ts(rng, last),
        "recordType": record_type,
        "parentHost": {"id": key.id},
        "artifact": {"@odata.type": artifact_type(artifact), "id": artifact},
    })
}

/// How many records a collection has: 3..=30 usually, hundreds for popular hosts.
fn collection_len(rng: &mut Rng, key: &HostKey, normal: (u64, u64), popular: (u64, u64)) -> usize {
    let (lo, hi) = if key.is_popular() { popular } else { normal };
    rng.range(lo, hi) as usize
}

/// How many counterparts of an `evil` host are forced to be malicious pool entries, so that a
/// chaining walk from an evil seed always finds actors.
fn forced_malicious(key: &HostKey) -> usize {
    if key.first_label() == "evil" {
        3
    } else {
        0
    }
}

pub(crate) fn passive_dns(key: &HostKey) -> Vec<Value> {
    if let Some(listing) = shared_listing(key, false) {
        return (0..listing.len()).map(|i| listing.record(i)).collect();
    }
    let mut rng = Rng::for_key(&key.norm, "passiveDns");
    let p = pool();
    let n = collection_len(&mut rng, key, (3, 30), (250, 450));
    let forced = forced_malicious(key);
    let mut out: Vec<(String, &str)> = Vec::with_capacity(n);
    match key.kind {
        HostKind::Name => {
            // Forward resolutions of a name: mostly A, some AAAA and CNAME.
            let n_a = (n * 6 / 10).clamp(1, POOL_V4);
            let n_aaaa = (n / 10).min(POOL_V6);
            let n_cname = (n - n_a - n_aaaa).min(POOL_NAMES);
            for i in sample_indices(&mut rng, POOL_V4, n_a, &p.mal_v4, forced) {
                out.push((p.v4[i].clone(), "A"));
            }
            for i in sample_indices(&mut rng, POOL_V6, n_aaaa, &p.mal_v6, 0) {
                out.push((p.v6[i].clone(), "AAAA"));
            }
            for i in sample_indices(&mut rng, POOL_NAMES, n_cname, &p.mal_names, 0) {
                out.push((p.names[i].clone(), "CNAME"));
            }
        }
        HostKind::V4(_) | HostKind::V6(_) => {
            // For an IP, the records name the hosts seen resolving to it.
            let rt = if matches!(key.kind, HostKind::V4(_)) {
                "A"
            } else {
                "AAAA"
            };
            for i in sample_indices(&mut rng, POOL_NAMES, n, &p.mal_names, forced) {
                out.push((p.names[i].clone(), rt));
            }
        }
    }
    // Interleave types, as Graph gives no particular order.
    rng.shuffle(&mut out);
    let mut records: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, (artifact, rt))| pdns_record(&mut rng, "passiveDns", key, i, rt, artifact))
        .collect();
    // The record to a shared host comes last and draws from its own generator, so the records
    // a name had before shared hosts existed keep their place, id and timestamps.
    if let Some(k) = shared_index(key) {
        let target = SHARED[k].host;
        let rt = if target.parse::<IpAddr>().is_ok() {
            "A"
        } else {
            "CNAME"
        };
        let mut rng = Rng::for_key(&key.norm, "passiveDnsShared");
        let i = records.len();
        records.push(pdns_record(&mut rng, "passiveDns", key, i, rt, target));
    }
    records
}

pub(crate) fn passive_dns_reverse(key: &HostKey) -> Vec<Value> {
    if let Some(listing) = shared_listing(key, true) {
        return (0..listing.len()).map(|i| listing.record(i)).collect();
    }
    let mut rng = Rng::for_key(&key.norm, "passiveDnsReverse");
    let p = pool();
    let n = collection_len(&mut rng, key, (3, 20), (200, 300));
    let forced = forced_malicious(key);
    // Reverse lookups: the names that pointed at this host (A/AAAA for an IP, CNAME/NS/MX
    // for a name).
    let types: &[&str] = match key.kind {
        HostKind::V4(_) => &["A"],
        HostKind::V6(_) => &["AAAA"],
        HostKind::Name => &["CNAME", "CNAME", "NS", "MX"],
    };
    sample_indices(&mut rng, POOL_NAMES, n, &p.mal_names, forced)
        .into_iter()
        .enumerate()
        .map(|(i, idx)| {
            let rt = *rng.pick(types);
            pdns_record(&mut rng, "passiveDnsReverse", key, i, rt, &p.names[idx])
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Host pairs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairFilter {
    All,
    /// `parentHostPairs`: the host is the child.
    HostIsChild,
    /// `childHostPairs`: the host is the parent.
    HostIsParent,
}

const LINK_KINDS: [&str; 7] = [
    "redirect",
    "finalRedirect",
    "parentPage",
    "iframe",
    "script.src",
    "img.src",
    "link.href",
];

/// One list per host; the three endpoints are views of it, so they always agree.
pub(crate) fn host_pairs(key: &HostKey, filter: PairFilter) -> Vec<Value> {
    let mut rng = Rng::for_key(&key.norm, "hostPairs");
    let p = pool();
    let n = collection_len(&mut rng, key, (2, 20), (150, 280));
    let mut out = Vec::new();
    let mut idx = 0usize;
    for other in sample_indices(&mut rng, POOL_NAMES, n, &p.mal_names, 0) {
        let other = &p.names[other];
        let host_is_parent = rng.chance(0.5);
        // About 15 % of pairs appear twice with different link kinds, as Graph shows.
        let copies = if rng.chance(0.15) { 2 } else { 1 };
        let k0 = rng.below(LINK_KINDS.len() as u64) as usize;
        for c in 0..copies {
            let (first, last) = seen_pair(&mut rng);
            let (parent, child) = if host_is_parent {
                (key.id.as_str(), other.as_str())
            } else {
                (other.as_str(), key.id.as_str())
            };
            let keep = match filter {
                PairFilter::All => true,
                PairFilter::HostIsChild => !host_is_parent,
                PairFilter::HostIsParent => host_is_parent,
            };
            if keep {
                out.push(json!({
                    "id": record_id("hostPair", &key.norm, idx),
                    "firstSeenDateTime": ts(&mut rng, first),
                    "lastSeenDateTime": ts(&mut rng, last),
                    "linkKind": LINK_KINDS[(k0 + c * 3) % LINK_KINDS.len()],
                    "parentHost": {"id": parent},
                    "childHost": {"id": child},
                }));
            } else {
                // Keep consuming the generator identically whatever the filter, so a pair has
                // the same timestamps in all three views.
                ts(&mut rng, first);
                ts(&mut rng, last);
            }
            idx += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Subdomains
// ---------------------------------------------------------------------------------------------

const SUB_LABELS: [&str; 16] = [
    "www",
    "mail",
    "api",
    "cdn",
    "vpn",
    "dev",
    "staging",
    "portal",
    "login",
    "shop",
    "blog",
    "m",
    "smtp",
    "autodiscover",
    "owa",
    "static",
];

pub(crate) fn subdomains(key: &HostKey) -> Vec<Value> {
    if key.is_ip() {
        return Vec::new();
    }
    let mut rng = Rng::for_key(&key.norm, "subdomains");
    let n = collection_len(&mut rng, key, (2, 12), (120, 200));
    let mut labels: Vec<String> = SUB_LABELS.iter().map(|s| s.to_string()).collect();
    rng.shuffle(&mut labels);
    // Beyond the usual names, numbered ones (app-17) make the hundreds a popular host has.
    labels.extend(
        (1..)
            .take(n.saturating_sub(labels.len()))
            .map(|i| format!("app-{i}")),
    );
    labels
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, label)| {
            let sub = format!("{label}.{}", key.norm);
            let first = rand_secs(&mut rng, T_START, T_END);
            json!({
                "id": base64(format!("{sub}$${i}").as_bytes(), false),
                "firstSeenDateTime": ts(&mut rng, first),
                "host": {"id": sub},
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reputation
// ---------------------------------------------------------------------------------------------

const ARTICLE_TEMPLATES: [&str; 3] = [
    "{} expands infrastructure with newly registered domains",
    "{} targets critical infrastructure with living-off-the-land techniques",
    "{} phishing campaign abuses compromised email accounts",
];

/// Article id and title for an actor's `n`-th article.
fn article(actor: &str, n: usize) -> (String, String) {
    let id = format!("{:08x}", hash2(actor, &format!("article-{n}")) as u32);
    (
        id,
        ARTICLE_TEMPLATES[n % ARTICLE_TEMPLATES.len()].replace("{}", actor),
    )
}

/// The rule naming `actor`, as on every malicious host.
fn cti_rule(actor: &str, description: Value) -> Value {
    json!({
        "name": "Cyber Threat Intelligence",
        "description": description,
        "severity": "high",
        "relatedDetailsUrl": format!("https://ti.defender.microsoft.com/intel-profiles/{}", profile_id(actor)),
    })
}

/// A shared host's reputation: its fixed classification, and the rule naming its actor if it
/// has one (the same rule a dedicated host of that actor carries).
fn shared_reputation(key: &HostKey, def: &SharedDef) -> Value {
    let mut rng = Rng::for_key(&key.norm, "reputation");
    let score = match def.classification {
        "malicious" => rng.range(75, 100),
        "suspicious" => rng.range(30, 74),
        _ => rng.range(1, 29),
    };
    let rules: Vec<Value> = def
        .actor
        .map(|actor| cti_rule(actor, json!(actor)))
        .into_iter()
        .collect();
    json!({
        "id": key.id,
        "classification": def.classification,
        "score": score,
        "rules": rules,
    })
}

pub(crate) fn reputation(key: &HostKey) -> Value {
    if let Some(def) = shared_def(&key.norm) {
        return shared_reputation(key, def);
    }
    let mut rng = Rng::for_key(&key.norm, "reputation");
    let (classification, score, rules) = if key.is_malicious() {
        malicious_reputation(&mut rng, key)
    } else {
        ordinary_reputation(&mut rng)
    };
    json!({
        "id": key.id,
        "classification": classification,
        "score": score,
        "rules": rules,
    })
}

/// A malicious host's reputation: its actor's rule, often with an article about the actor.
fn malicious_reputation(rng: &mut Rng, key: &HostKey) -> (&'static str, u64, Vec<Value>) {
    let mut rules: Vec<Value> = Vec::new();
    let actor = actor_of(&key.norm);
    // Graph is seen to send the actor either as a string or as a list of strings.
    let description = if rng.chance(0.25) {
        json!([actor])
    } else {
        json!(actor)
    };
    rules.push(cti_rule(actor, description));
    if rng.chance(0.7) {
        let (id, title) = article(actor, rng.below(ARTICLE_TEMPLATES.len() as u64) as usize);
        rules.push(json!({
            "name": "Microsoft Defender Threat Intelligence Intel Article",
            "description": title,
            "severity": "high",
            "relatedDetailsUrl": format!("https://ti.defender.microsoft.com/article/{id}"),
        }));
    }
    ("malicious", rng.range(75, 100), rules)
}

/// Any other host's: unknown, neutral or suspicious, with a few infrastructure rules.
fn ordinary_reputation(rng: &mut Rng) -> (&'static str, u64, Vec<Value>) {
    let p = pool();
    let mut rules: Vec<Value> = Vec::new();
    let r = rng.unit();
    let (class, score, max_rules) = if r < 0.35 {
        ("unknown", 0, 1)
    } else if r < 0.85 {
        ("neutral", rng.range(1, 29), 2)
    } else {
        ("suspicious", rng.range(30, 74), 3)
    };
    for _ in 0..rng.below(max_rules + 1) {
        let (name, description) = match rng.below(3) {
            0 => (
                "Name server",
                format!("ns{}.{}", rng.range(1, 4), rng.pick(&DNS_PROVIDERS)),
            ),
            1 => ("Registrar", rng.pick(&REGISTRARS).0.to_string()),
            _ => ("Resolving IP Address", rng.pick(&p.v4).clone()),
        };
        let severity = if class == "suspicious" {
            "medium"
        } else {
            *rng.pick(&["unknown", "low"])
        };
        rules.push(json!({
            "name": name,
            "description": description,
            "severity": severity,
            "relatedDetailsUrl": Value::Null,
        }));
    }
    (class, score, rules)
}

// ---------------------------------------------------------------------------------------------
// Intelligence profiles
// ---------------------------------------------------------------------------------------------

struct ProfileDef {
    title: &'static str,
    kind: &'static str,
    aliases: &'static [&'static str],
    origin: &'static [(&'static str, &'static str)],
    first_active: &'static str,
    targets: &'static [&'static str],
    summary: &'static str,
}

const PROFILES: [ProfileDef; 7] = [
    ProfileDef {
        title: "Aqua Blizzard",
        kind: "actor",
        aliases: &["ACTINIUM", "Gamaredon"],
        origin: &[("RU", "Russia")],
        first_active: "2013-06-01T00:00:00Z",
        targets: &["Government Agencies & Services", "Defense", "Non-Government Organization"],
        summary: "Aqua Blizzard is a nation-state actor focused on espionage against government and defense organizations.",
    },
    ProfileDef {
        title: "Forest Blizzard",
        kind: "actor",
        aliases: &["STRONTIUM", "APT28", "Fancy Bear"],
        origin: &[("RU", "Russia")],
        first_active: "2008-01-01T00:00:00.000Z",
        targets: &["Government Agencies & Services", "Energy", "Media"],
        summary: "Forest Blizzard conducts credential harvesting and espionage operations.",
    },
    ProfileDef {
        title: "Mint Sandstorm",
        kind: "actor",
        aliases: &["PHOSPHORUS", "APT35", "Charming Kitten"],
        origin: &[("IR", "Iran")],
        first_active: "2014-03-01T00:00:00Z",
        targets: &["Education", "Government Agencies & Services", "Non-Government Organization"],
        summary: "Mint Sandstorm runs social-engineering campaigns against researchers and officials.",
    },
    ProfileDef {
        title: "Storm-0558",
        kind: "actor",
        aliases: &[],
        origin: &[("CN", "China")],
        first_active: "2021-01-01T00:00:00Z",
        targets: &["Government Agencies & Services"],
        summary: "Storm-0558 targets email accounts through forged authentication tokens.",
    },
    ProfileDef {
        title: "Volt Typhoon",
        kind: "actor",
        aliases: &["BRONZE SILHOUETTE", "Vanguard Panda"],
        origin: &[("CN", "China")],
        first_active: "2021-06-01T00:00:00Z",
        targets: &["Communications", "Manufacturing", "Utility", "Transportation"],
        summary: "Volt Typhoon uses living-off-the-land techniques against critical infrastructure.",
    },
    ProfileDef {
        title: "Lace Tempest",
        kind: "actor",
        aliases: &["DEV-0950", "FIN11"],
        origin: &[],
        first_active: "2016-01-01T00:00:00Z",
        targets: &["Retail", "Financial Services", "Healthcare"],
        summary: "Lace Tempest is a financially motivated group known for ransomware and data extortion.",
    },
    ProfileDef {
        title: "Cobalt Strike",
        kind: "tool",
        aliases: &["Beacon"],
        origin: &[],
        first_active: "2012-01-01T00:00:00Z",
        targets: &[],
        summary: "Cobalt Strike is a commercial penetration-testing framework widely abused by threat actors.",
    },
];

/// A 64-hex-digit id like the ones Graph uses for profiles, stable per title.
pub(crate) fn profile_id(title: &str) -> String {
    (0..4)
        .map(|k| format!("{:016x}", hash2(title, &format!("profile-{k}"))))
        .collect()
}

fn profile_json(def: &ProfileDef) -> Value {
    let origin: Vec<Value> = def
        .origin
        .iter()
        .map(|(code, label)| json!({"code": code, "label": label}))
        .collect();
    json!({
        "id": profile_id(def.title),
        "kind": def.kind,
        "title": def.title,
        "aliases": def.aliases,
        "firstActiveDateTime": def.first_active,
        "targets": def.targets,
        "countriesOrRegionsOfOrigin": origin,
        "summary": {"content": def.summary, "format": "text"},
        "description": {
            "content": format!("## {}\n\n{}\n\nMicrosoft tracks this activity as **{}**.", def.title, def.summary, def.title),
            "format": "markdown",
        },
        "tradecraft": {
            "content": format!("<p>{} uses spear-phishing, credential theft and public-facing application exploits.</p>", def.title),
            "format": "html",
        },
    })
}

pub(crate) fn intel_profiles() -> Vec<Value> {
    PROFILES.iter().map(profile_json).collect()
}

pub(crate) fn intel_profile(id: &str) -> Option<Value> {
    PROFILES
        .iter()
        .find(|d| profile_id(d.title).eq_ignore_ascii_case(id))
        .map(profile_json)
}

/// Indicators of a profile: for an actor, every malicious pool entry attributed to it (so a
/// chaining walk that found the actor via reputation can match them), plus other pool entries
/// and a few hosts outside the pool; for the tool, a sample of pool entries.
pub(crate) fn profile_indicators(id: &str) -> Option<Vec<Value>> {
    let def = PROFILES
        .iter()
        .find(|d| profile_id(d.title).eq_ignore_ascii_case(id))?;
    let pid = profile_id(def.title);
    let mut rng = Rng::for_key(&pid, "indicators");
    let p = pool();
    let all: Vec<&String> = p.v4.iter().chain(&p.v6).chain(&p.names).collect();
    let mut artifacts: Vec<String> = Vec::new();
    if def.kind == "actor" {
        let mut own: Vec<&String> = p
            .malicious
            .iter()
            .filter(|h| actor_of(h) == def.title)
            .collect();
        own.sort(); // HashSet order is not stable across processes
        artifacts.extend(own.into_iter().cloned());
        let slug = def.title.to_ascii_lowercase().replace([' ', '-'], "");
        artifacts.extend((1..=rng.range(2, 5)).map(|i| format!("update-{i}.{slug}-infra.com")));
    }
    let extra = rng.range(10, 30) as usize;
    for i in sample_indices(&mut rng, all.len(), extra, &[], 0) {
        if !artifacts.contains(all[i]) {
            artifacts.push(all[i].clone());
        }
    }
    rng.shuffle(&mut artifacts);
    let items = artifacts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (first, last) = seen_pair(&mut rng);
            let last = if rng.chance(0.2) {
                Value::Null
            } else {
                json!(ts(&mut rng, last))
            };
            json!({
                "id": record_id("indicator", &pid, i),
                "source": rng.pick(&["microsoft", "osint", "public"]),
                "firstSeenDateTime": ts(&mut rng, first),
                "lastSeenDateTime": last,
                "artifact": {"@odata.type": artifact_type(a), "id": a},
            })
        })
        .collect();
    Some(items)
}

/// The id of the profile whose title (case-insensitively) or id is `title_or_id`.
pub(crate) fn find_profile_id(title_or_id: &str) -> Option<String> {
    let wanted = title_or_id.trim();
    PROFILES
        .iter()
        .map(|d| (d.title, profile_id(d.title)))
        .find(|(title, id)| title.eq_ignore_ascii_case(wanted) || id.eq_ignore_ascii_case(wanted))
        .map(|(_, id)| id)
}

/// An indicator added at runtime, in the canonical form hosts are keyed by when it is one
/// (lower case, no trailing dot, canonical IP), as Graph lists artifacts.
pub(crate) fn canonical_artifact(artifact: &str) -> String {
    match HostKey::parse(artifact.trim()) {
        Some(key) => key.norm,
        None => artifact.trim().to_string(),
    }
}

/// The listing entry of an indicator added at runtime: shaped like the synthetic ones, its id
/// and dates a function of the profile and the artifact, so a re-sync sees the same record.
pub(crate) fn added_indicator(profile_id: &str, artifact: &str) -> Value {
    let key = format!("{profile_id}:{artifact}");
    let mut rng = Rng::for_key(&key, "addedIndicator");
    let (first, last) = seen_pair(&mut rng);
    json!({
        "id": record_id("addedIndicator", &key, 0),
        "source": "microsoft",
        "firstSeenDateTime": ts(&mut rng, first),
        "lastSeenDateTime": ts(&mut rng, last),
        "artifact": {"@odata.type": artifact_type(artifact), "id": artifact},
    })
}

/// Ids of all profiles, for tests and for the module documentation's examples.
#[cfg(test)]
pub(crate) fn profile_ids() -> std::collections::HashMap<&'static str, String> {
    PROFILES
        .iter()
        .map(|d| (d.title, profile_id(d.title)))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64(b"contoso.com$$1", false), "Y29udG9zby5jb20kJDE=");
        assert_eq!(base64(b"ab", false), "YWI=");
        assert_eq!(base64(b"ab", true), "YWI");
        assert_eq!(base64(b"", false), "");
    }

    #[test]
    fn pool_avoids_private_and_documentation_ranges() {
        let p = pool();
        assert_eq!(p.v4.len(), POOL_V4);
        for ip in &p.v4 {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert!(matches!(ip.octets()[0], 20 | 40), "{ip}");
            assert!(!ip.is_private() && !ip.is_documentation() && !ip.is_loopback());
        }
        for ip in &p.v6 {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(ip.segments()[0], 0x2603, "{ip}");
        }
        // About 10 % malicious, and every actor has some.
        assert!(
            (30..=110).contains(&p.malicious.len()),
            "{}",
            p.malicious.len()
        );
        for actor in ACTORS {
            assert!(p.malicious.iter().any(|h| actor_of(h) == actor), "{actor}");
        }
    }

    #[test]
    fn rules_for_special_hosts() {
        let k = |s: &str| HostKey::parse(s).unwrap();
        assert!(k("unknown.example.com").is_unknown());
        assert!(k("a.nxdomain-test.org").is_unknown());
        assert!(!k("contoso.com").is_unknown());
        assert!(k("popular.contoso.com").is_popular());
        assert!(k("evil.contoso.com").is_malicious());
        assert!(HostKey::parse("http://x/").is_none());
        assert!(HostKey::parse("").is_none());
        assert_eq!(k("2001:DB8::1").norm, "2001:db8::1");
        assert_eq!(k("Contoso.COM.").norm, "contoso.com");
    }

    #[test]
    fn shares_are_roughly_as_documented() {
        let keys: Vec<HostKey> = (0..5000)
            .map(|i| HostKey::parse(&format!("host{i}.contoso.com")).unwrap())
            .collect();
        let popular = keys.iter().filter(|k| k.is_popular()).count();
        assert!((50..=150).contains(&popular), "popular {popular}");
        let odd = keys
            .iter()
            .filter(|k| k.type_name() == T_HOSTNAME_ODD)
            .count();
        assert!((350..=650).contains(&odd), "hostName casing {odd}");
        let placeholder = keys
            .iter()
            .filter(|k| whois(k).to_string().contains(TS_PLACEHOLDER))
            .count();
        assert!(
            (120..=300).contains(&placeholder),
            "placeholder {placeholder}"
        );
        let listed = pool()
            .malicious
            .iter()
            .filter(|h| {
                let rep = reputation(&HostKey::parse(h).unwrap());
                rep["rules"][0]["description"].is_array()
            })
            .count();
        assert!(listed > 0 && listed < pool().malicious.len());
    }

    #[test]
    fn timestamps_have_both_styles() {
        assert_eq!(fmt_ts(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_ts(0, Some(7)), "1970-01-01T00:00:00.007Z");
    }

    #[test]
    fn pair_views_agree() {
        let key = HostKey::parse("contoso.com").unwrap();
        let all = host_pairs(&key, PairFilter::All);
        let parents = host_pairs(&key, PairFilter::HostIsChild);
        let children = host_pairs(&key, PairFilter::HostIsParent);
        assert_eq!(all.len(), parents.len() + children.len());
        for v in parents.iter().chain(&children) {
            assert!(all.contains(v));
        }
    }

    #[test]
    fn profile_ids_are_distinct() {
        let ids = profile_ids();
        let set: HashSet<_> = ids.values().collect();
        assert_eq!(set.len(), PROFILES.len());
        assert!(ids.values().all(|id| id.len() == 64));
    }
}

//! Parse, refang and canonicalise what feeds publish: IPv4 and IPv6 addresses, domains and hosts.
//!
//! [`normalise`] turns one raw value from a feed into an [`Observable`] whose value is canonical,
//! so that the same thing always has the same key in the store and the same path segment in a
//! Microsoft Graph request, whatever way the feed wrote it. The steps, in order:
//!
//! 1. Inputs longer than [`MAX_INPUT_LEN`] bytes are rejected before anything else is done. The
//!    rest is trimmed of whitespace; what is left must be non-empty and free of control characters.
//! 2. Defanging is undone: `[.]`, `(.)`, `{.}`, `[dot]`, `(dot)`, `{dot}` become `.`, `[:]` becomes
//!    `:`, `[://]` becomes `://` (all ASCII case-insensitive), and an `hxxp`/`hxxps` scheme becomes
//!    `http`/`https`. `[at]`, `(at)`, `{at}` and `[@]` are not refanged but recognised as e-mail
//!    addresses, which are rejected.
//! 3. Things that are not hosts are rejected with their own error: file hashes (32, 40, 64 or 128
//!    hex digits) and e-mail addresses. A URL is reduced to its host (userinfo, port, path, query
//!    and fragment dropped), so are `host:port`, `host/path` and `[ipv6]:port`.
//! 4. The host is an IPv6 address if it has a colon or was bracketed, an IPv4 address if its last
//!    label is numeric (all digits, or `0x` hex, as in the WHATWG URL standard), a name otherwise.
//!    - IPv4 must be a plain dotted quad: leading zeros (octal or decimal?) and the integer, hex and
//!      short forms that `inet_aton` accepts are rejected rather than guessed at.
//!    - IPv6 is written in RFC 5952 form; zone ids are rejected; an IPv4-mapped address
//!      (`::ffff:1.2.3.4`) *is* the IPv4 address and comes out as kind ipv4.
//!    - Names are mapped with IDNA (UTS 46, non-transitional, as browsers do) to lowercase ASCII
//!      with punycode labels, one trailing dot is dropped, and then DNS rules apply: labels of 1 to
//!      63 bytes of letters, digits, hyphens (not first or last) and underscores (`_dmarc`), at most
//!      253 bytes in all, at least two labels, no wildcards.
//! 5. The kind, if the feed declared one, must agree with the value; see [`normalise`].
//! 6. Addresses in non-public ranges and names under special-use or private top-level domains are
//!    [`Normalised::Skipped`], with the reason, unless [`NormaliseOptions::allow_non_public`].
//!
//! A canonical value only ever holds `a-z`, `0-9`, `.`, `-`, `_` and (IPv6) `:`, so it is a
//! single path segment once percent-encoded and never needs escaping in a log line.
//!
//! Choices made where the rules could go either way:
//! - IDNA is what a browser does (UTS 46 non-transitional, no STD3 rules, hyphen positions not
//!   checked, so `r3---sn-x.googlevideo.com` is fine): emoji labels are accepted
//!   (`💩.la` → `xn--ls8h.la`), `ß` is kept (`xn--zca.de`), characters UTS 46 ignores (zero-width
//!   space, soft hyphen, BOM) vanish, full-width letters, digits and dots are folded (so
//!   `８.８.８.８` is the IPv4 address 8.8.8.8), and what IDNA rejects (ZWJ outside its context,
//!   bidi overrides, U+FFFD from a lossy decode, bad `xn--` labels) is `invalid_idna`.
//! - Percent-encoded hosts are not decoded: `%` in a host is `invalid_character`.
//! - Without a scheme, an IP followed by `/` and 1 to 3 digits (`10.0.0.0/8`) is a CIDR range,
//!   `cidr_range`, not a host with a path; with a scheme (`http://1.2.3.4/24`) it is a path.
//! - Without a scheme any `@` makes an e-mail address (`user:pw@host` included); with a scheme
//!   everything up to the last `@` of the authority is userinfo, as in browsers.
//! - A leading `//` (scheme-relative URL) is accepted; one trailing dot on an IPv4 address too.
//! - An IPv4 part with a leading zero is `ambiguous_ipv4` even when octal and decimal agree (`00`).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use serde::{Deserialize, Serialize};

/// Inputs longer than this many bytes (before trimming) are rejected without looking at them.
pub const MAX_INPUT_LEN: usize = 2048;
/// Longest DNS label, in bytes (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS name, in bytes, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// How much of an offending input an error message shows, in characters.
const SHOWN_CHARS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------------------------

/// What an observable is. Domains and hosts are both DNS names: a domain is a registrable domain
/// (`contoso.com`, `contoso.co.uk`), a host any other name (`www.contoso.com`); see [`detect_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservableKind {
    Ipv4,
    Ipv6,
    Domain,
    Host,
}

impl ObservableKind {
    /// Every kind, in declaration order.
    pub const ALL: [ObservableKind; 4] = [
        ObservableKind::Ipv4,
        ObservableKind::Ipv6,
        ObservableKind::Domain,
        ObservableKind::Host,
    ];

    /// The lowercase name, as in serde and [`fmt::Display`].
    pub fn as_str(self) -> &'static str {
        match self {
            ObservableKind::Ipv4 => "ipv4",
            ObservableKind::Ipv6 => "ipv6",
            ObservableKind::Domain => "domain",
            ObservableKind::Host => "host",
        }
    }

    /// Ipv4 or Ipv6.
    pub fn is_ip(self) -> bool {
        matches!(self, ObservableKind::Ipv4 | ObservableKind::Ipv6)
    }

    /// Domain or Host.
    pub fn is_name(self) -> bool {
        !self.is_ip()
    }
}

impl fmt::Display for ObservableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is none of `ipv4`, `ipv6`, `domain`, `host` (or the aliases `hostname` and
/// `fqdn` of `host`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown observable kind {value}: expected one of ipv4, ipv6, domain, host (or hostname, fqdn)"
)]
pub struct UnknownKind {
    /// The value, quoted and truncated.
    pub value: String,
}

impl FromStr for ObservableKind {
    type Err = UnknownKind;

    /// Case-insensitive and trimmed; `hostname` and `fqdn` are aliases of `host`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let kind = if t.eq_ignore_ascii_case("ipv4") {
            ObservableKind::Ipv4
        } else if t.eq_ignore_ascii_case("ipv6") {
            ObservableKind::Ipv6
        } else if t.eq_ignore_ascii_case("domain") {
            ObservableKind::Domain
        } else if t.eq_ignore_ascii_case("host")
            || t.eq_ignore_ascii_case("hostname")
            || t.eq_ignore_ascii_case("fqdn")
        {
            ObservableKind::Host
        } else {
            return Err(UnknownKind { value: shown(s) });
        };
        Ok(kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Observable
// ---------------------------------------------------------------------------------------------

/// A canonical observable. Only [`normalise`] (and deserialising, which runs it) makes one, so
/// the value is always canonical for its kind.
///
/// Deserialising re-normalises the value with the stored kind as the declared kind and
/// non-public values allowed, so a stored observable written by an older version of these rules
/// comes back canonical for the current ones, and a value that is no longer valid is an error
/// rather than an observable that breaks the invariant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ObservableRepr")]
pub struct Observable {
    kind: ObservableKind,
    value: String,
}

impl Observable {
    /// The kind.
    pub fn kind(&self) -> ObservableKind {
        self.kind
    }

    /// The canonical value: a dotted quad, an RFC 5952 IPv6 address, or a lowercase ASCII name
    /// without a trailing dot.
    pub fn value(&self) -> &str {
        &self.value
    }

    fn new_canonical(kind: ObservableKind, value: String) -> Self {
        debug_assert!(
            is_safe_canonical(&value),
            "canonical value breaks the character rule: {value:?}"
        );
        Observable { kind, value }
    }
}

impl fmt::Display for Observable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

#[derive(Deserialize)]
struct ObservableRepr {
    kind: ObservableKind,
    value: String,
}

impl TryFrom<ObservableRepr> for Observable {
    type Error = InvalidObservable;

    fn try_from(repr: ObservableRepr) -> Result<Self, Self::Error> {
        let opts = NormaliseOptions {
            allow_non_public: true,
        };
        normalise(&repr.value, Some(repr.kind), &opts).map(Normalised::into_observable)
    }
}

/// True when `value` is non-empty and only holds `a-z 0-9 . - _ :`: a canonical value never holds
/// anything else, so it is one path segment once percent-encoded.
pub fn is_safe_canonical(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':'))
}

/// How [`normalise`] treats values MDTI cannot know anything useful about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NormaliseOptions {
    /// Return private, loopback, documentation, multicast... addresses and names under
    /// special-use TLDs as [`Normalised::Ready`] instead of [`Normalised::Skipped`].
    pub allow_non_public: bool,
}

/// A valid observable, to be enriched or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalised {
    /// Send it to MDTI.
    Ready(Observable),
    /// Valid, but not worth a Graph request (a private address, a `.local` name...).
    Skipped {
        observable: Observable,
        /// Why, naming the range or the TLD, e.g. `private address (10.0.0.0/8)`.
        reason: String,
    },
}

impl Normalised {
    /// The observable, whether ready or skipped.
    pub fn observable(&self) -> &Observable {
        match self {
            Normalised::Ready(o) => o,
            Normalised::Skipped { observable, .. } => observable,
        }
    }

    /// The observable, whether ready or skipped.
    pub fn into_observable(self) -> Observable {
        match self {
            Normalised::Ready(o) => o,
            Normalised::Skipped { observable, .. } => observable,
        }
    }

    /// True for [`Normalised::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Normalised::Ready(_))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a raw value is not an observable. Every `input`, `label` and `port` field holds the
/// offending text already quoted and escaped with `{:?}` and cut to 100 characters, so the
/// message is safe to log whatever the feed sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObservable {
    #[error("observable is empty")]
    Empty,
    #[error("observable is {len} bytes long, over the {max}-byte limit (starts {start})", max = MAX_INPUT_LEN)]
    TooLong { len: usize, start: String },
    #[error("observable contains the control character {found:?}: {input}")]
    ControlCharacter { input: String, found: char },
    #[error(
        "e-mail addresses are not supported (MDTI enriches hosts and IP addresses only): {input}"
    )]
    Email { input: String },
    #[error("file hashes are not supported (this looks like {algorithm}; MDTI host and IP enrichment only): {input}")]
    FileHash {
        input: String,
        algorithm: &'static str,
    },
    #[error("not an IP address or host name ({detail}): {input}")]
    NotAnObservable { input: String, detail: &'static str },
    #[error("the character {found:?} is not allowed in a host name: {input}")]
    InvalidCharacter { input: String, found: char },
    #[error("invalid port {port}: {input}")]
    InvalidPort { input: String, port: String },
    #[error("wildcard names are not supported, only single names: {input}")]
    Wildcard { input: String },
    #[error("network ranges (CIDR) are not supported, only single addresses: {input}")]
    CidrRange { input: String },
    #[error("IPv4 address with leading zeros is ambiguous (octal or decimal?): {input}")]
    AmbiguousIpv4 { input: String },
    #[error("IPv4 address in integer, hexadecimal or shortened form is not accepted, only a dotted quad: {input}")]
    NonStandardIpv4 { input: String },
    #[error("invalid IPv4 address ({detail}): {input}")]
    InvalidIpv4 { input: String, detail: &'static str },
    #[error("invalid IPv6 address: {input}")]
    InvalidIpv6 { input: String },
    #[error("IPv6 zone ids (scoped addresses) are not supported: {input}")]
    Ipv6ZoneId { input: String },
    #[error("not a valid internationalised domain name (IDNA/UTS 46 rejects it): {input}")]
    InvalidIdna { input: String },
    #[error("empty label (leading, doubled or extra trailing dot): {input}")]
    EmptyLabel { input: String },
    #[error("label {label} is {len} bytes long, over the {max}-byte DNS limit", max = MAX_LABEL_LEN)]
    LabelTooLong { label: String, len: usize },
    #[error("name is {len} bytes long, over the {max}-byte DNS limit: {input}", max = MAX_NAME_LEN)]
    NameTooLong { input: String, len: usize },
    #[error("label {label} starts or ends with a hyphen: {input}")]
    InvalidLabel { input: String, label: String },
    #[error(
        "single-label name, not something MDTI knows (it needs a fully qualified name): {input}"
    )]
    SingleLabel { input: String },
    #[error("declared kind {declared} does not match the value, which is {detected}: {input}")]
    KindMismatch {
        input: String,
        declared: ObservableKind,
        detected: ObservableKind,
    },
}

impl InvalidObservable {
    /// A short, stable, machine-readable code for the error, for metrics and dead-letter records.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidObservable::Empty => "empty",
            InvalidObservable::TooLong { .. } => "too_long",
            InvalidObservable::ControlCharacter { .. } => "control_character",
            InvalidObservable::Email { .. } => "email",
            InvalidObservable::FileHash { .. } => "file_hash",
            InvalidObservable::NotAnObservable { .. } => "not_an_observable",
            InvalidObservable::InvalidCharacter { .. } => "invalid_character",
            InvalidObservable::InvalidPort { .. } => "invalid_port",
            InvalidObservable::Wildcard { .. } => "wildcard",
            InvalidObservable::CidrRange { .. } => "cidr_range",
            InvalidObservable::AmbiguousIpv4 { .. } => "ambiguous_ipv4",
            InvalidObservable::NonStandardIpv4 { .. } => "non_standard_ipv4",
            InvalidObservable::InvalidIpv4 { .. } => "invalid_ipv4",
            InvalidObservable::InvalidIpv6 { .. } => "invalid_ipv6",
            InvalidObservable::Ipv6ZoneId { .. } => "ipv6_zone_id",
            InvalidObservable::InvalidIdna { .. } => "invalid_idna",
            InvalidObservable::EmptyLabel { .. } => "empty_label",
            InvalidObservable::LabelTooLong { .. } => "label_too_long",
            InvalidObservable::NameTooLong { .. } => "name_too_long",
            InvalidObservable::InvalidLabel { .. } => "invalid_label",
            InvalidObservable::SingleLabel { .. } => "single_label",
            InvalidObservable::KindMismatch { .. } => "kind_mismatch",
        }
    }

    /// The quoted input the message names, for the errors that name one.
    fn input_mut(&mut self) -> Option<&mut String> {
        match self {
            InvalidObservable::Empty
            | InvalidObservable::TooLong { .. }
            | InvalidObservable::LabelTooLong { .. } => None,
            InvalidObservable::ControlCharacter { input, .. }
            | InvalidObservable::Email { input }
            | InvalidObservable::FileHash { input, .. }
            | InvalidObservable::NotAnObservable { input, .. }
            | InvalidObservable::InvalidCharacter { input, .. }
            | InvalidObservable::InvalidPort { input, .. }
            | InvalidObservable::Wildcard { input }
            | InvalidObservable::CidrRange { input }
            | InvalidObservable::AmbiguousIpv4 { input }
            | InvalidObservable::NonStandardIpv4 { input }
            | InvalidObservable::InvalidIpv4 { input, .. }
            | InvalidObservable::InvalidIpv6 { input }
            | InvalidObservable::Ipv6ZoneId { input }
            | InvalidObservable::InvalidIdna { input }
            | InvalidObservable::EmptyLabel { input }
            | InvalidObservable::NameTooLong { input, .. }
            | InvalidObservable::InvalidLabel { input, .. }
            | InvalidObservable::SingleLabel { input }
            | InvalidObservable::KindMismatch { input, .. } => Some(input),
        }
    }

    /// Every code [`InvalidObservable::code`] can return.
    pub const CODES: [&'static str; 22] = [
        "empty",
        "too_long",
        "control_character",
        "email",
        "file_hash",
        "not_an_observable",
        "invalid_character",
        "invalid_port",
        "wildcard",
        "cidr_range",
        "ambiguous_ipv4",
        "non_standard_ipv4",
        "invalid_ipv4",
        "invalid_ipv6",
        "ipv6_zone_id",
        "invalid_idna",
        "empty_label",
        "label_too_long",
        "name_too_long",
        "invalid_label",
        "single_label",
        "kind_mismatch",
    ];
}

/// `s` quoted and escaped with `{:?}`, cut to [`SHOWN_CHARS`] characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &s[..cut], s.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// normalise
// ---------------------------------------------------------------------------------------------

/// Canonicalise one raw value from a feed (see the module documentation for the steps).
///
/// `declared` is the kind the feed said the value is, if it said one:
/// - a name declared `domain` or `host` keeps the declared kind even when [`detect_kind`] would
///   say otherwise: the feed knows best, and our public suffix list is small;
/// - an IP declared as a name, a name declared as an IP, and IPv4 and IPv6 declared as each
///   other are `kind_mismatch` errors;
/// - except that an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) declared `ipv6` is accepted and
///   comes out as the IPv4 address, kind ipv4: it is that address, and MDTI knows it as one.
///
/// `Err` means the value is not a valid observable; `Ok(Skipped)` that it is valid but not public
/// (unless `opts.allow_non_public`).
pub fn normalise(
    raw: &str,
    declared: Option<ObservableKind>,
    opts: &NormaliseOptions,
) -> Result<Normalised, InvalidObservable> {
    let refanged = screened(raw)?;
    let text: &str = &refanged;
    let extracted = extract_host(text)?;
    let parsed = parse_host(extracted.host, extracted.bracketed).map_err(|mut error| {
        // The host alone can be unrecognisable (`..` of `../../etc/passwd`): name what it was
        // taken from too.
        if extracted.host != text {
            if let Some(input) = error.input_mut() {
                *input = format!("{input} (the host of {})", shown(text));
            }
        }
        error
    })?;
    let observable = match parsed {
        ParsedHost::Ip { addr, mapped } => {
            if extracted.cidr_suffix {
                return Err(InvalidObservable::CidrRange { input: shown(text) });
            }
            ip_observable(addr, mapped, declared)?
        }
        ParsedHost::Name(name) => name_observable(name, declared)?,
    };

    if !opts.allow_non_public {
        if let Some(reason) = non_public_reason(&observable) {
            return Ok(Normalised::Skipped { observable, reason });
        }
    }
    Ok(Normalised::Ready(observable))
}

/// `raw` trimmed and refanged, once it is known to be no longer than [`MAX_INPUT_LEN`], not
/// empty, free of control characters and not a file hash.
fn screened(raw: &str) -> Result<Cow<'_, str>, InvalidObservable> {
    if raw.len() > MAX_INPUT_LEN {
        return Err(InvalidObservable::TooLong {
            len: raw.len(),
            start: shown(raw),
        });
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InvalidObservable::Empty);
    }
    if let Some(found) = trimmed.chars().find(|c| c.is_control()) {
        return Err(InvalidObservable::ControlCharacter {
            input: shown(trimmed),
            found,
        });
    }
    let refanged = refang(trimmed);
    if let Some(algorithm) = hash_algorithm(&refanged) {
        return Err(InvalidObservable::FileHash {
            input: shown(&refanged),
            algorithm,
        });
    }
    Ok(refanged)
}

/// An address as an observable, if it is the kind declared (an IPv4-mapped IPv6 address may
/// be declared `ipv6`).
fn ip_observable(
    addr: IpAddr,
    mapped: bool,
    declared: Option<ObservableKind>,
) -> Result<Observable, InvalidObservable> {
    let (kind, value) = match addr {
        IpAddr::V4(a) => (ObservableKind::Ipv4, a.to_string()),
        IpAddr::V6(a) => (ObservableKind::Ipv6, a.to_string()),
    };
    let agrees = match declared {
        None => true,
        Some(d) => d == kind || (d == ObservableKind::Ipv6 && mapped),
    };
    if !agrees {
        return Err(InvalidObservable::KindMismatch {
            input: shown(&value),
            declared: declared.unwrap_or(kind),
            detected: kind,
        });
    }
    Ok(Observable::new_canonical(kind, value))
}

/// A name as an observable: of the kind declared if that is a name kind, else as detected.
fn name_observable(
    name: String,
    declared: Option<ObservableKind>,
) -> Result<Observable, InvalidObservable> {
    let kind = match declared {
        Some(d) if d.is_name() => d,
        Some(d) => {
            return Err(InvalidObservable::KindMismatch {
                input: shown(&name),
                declared: d,
                detected: name_kind(&name),
            })
        }
        None => name_kind(&name),
    };
    Ok(Observable::new_canonical(kind, name))
}

// ---------------------------------------------------------------------------------------------
// Refanging, hashes, URL reduction
// ---------------------------------------------------------------------------------------------

/// Defanged spellings and what they stand for; matched ASCII case-insensitively, longest first.
const DEFANGS: [(&str, &str); 8] = [
    ("[://]", "://"),
    ("[dot]", "."),
    ("(dot)", "."),
    ("{dot}", "."),
    ("[:]", ":"),
    ("[.]", "."),
    ("(.)", "."),
    ("{.}", "."),
];

/// Undo the usual ways of defanging an indicator.
fn refang(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let has_brackets = bytes.iter().any(|b| matches!(b, b'[' | b'(' | b'{'));
    let hxxp = bytes.len() >= 4 && bytes[..4].eq_ignore_ascii_case(b"hxxp");
    if !has_brackets && !hxxp {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'scan: while i < bytes.len() {
        for (pattern, replacement) in DEFANGS {
            let p = pattern.as_bytes();
            if bytes.len() - i >= p.len() && bytes[i..i + p.len()].eq_ignore_ascii_case(p) {
                out.push_str(replacement);
                i += p.len();
                continue 'scan;
            }
        }
        // `i` is on a char boundary: patterns are ASCII and we step whole chars.
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    let ob = out.as_bytes();
    let scheme_follows = |rest: &[u8]| {
        rest.starts_with(b"://")
            || (rest.first().is_some_and(|b| b.eq_ignore_ascii_case(&b's'))
                && rest[1..].starts_with(b"://"))
    };
    if ob.len() >= 4 && ob[..4].eq_ignore_ascii_case(b"hxxp") && scheme_follows(&ob[4..]) {
        out.replace_range(..4, "http");
    }
    Cow::Owned(out)
}

/// The hash algorithm a string of only hex digits of a hash's length looks like.
fn hash_algorithm(s: &str) -> Option<&'static str> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match s.len() {
        32 => Some("an MD5 hash"),
        40 => Some("a SHA-1 hash"),
        64 => Some("a SHA-256 hash"),
        128 => Some("a SHA-512 hash"),
        _ => None,
    }
}

/// The host part of a URL, `host:port`, `host/path` or bare host.
struct Extracted<'a> {
    host: &'a str,
    /// Was written `[...]`: must be an IPv6 address.
    bracketed: bool,
    /// No scheme and the rest is `/` and 1 to 3 digits: `10.0.0.0/8` is a range, not a path.
    cidr_suffix: bool,
}

/// The rest after `scheme://` when `s` starts with a syntactically valid scheme.
fn strip_scheme(s: &str) -> Option<&str> {
    // A scheme has no `:` of its own, so only the first `:` can end one.
    let at = s.find(':').filter(|&at| s[at..].starts_with("://"))?;
    let scheme = &s[..at];
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then(|| &s[at + 3..])
}

/// Refang markers that stand for `@`: left alone, but they make the value an e-mail address.
fn has_at_marker(s: &str) -> bool {
    const MARKERS: [&[u8]; 4] = [b"[at]", b"(at)", b"{at}", b"[@]"];
    let b = s.as_bytes();
    // Every marker opens with a bracket: most values have none, and need no closer look.
    if !b.iter().any(|c| matches!(c, b'[' | b'(' | b'{')) {
        return false;
    }
    MARKERS
        .iter()
        .any(|m| b.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m)))
}

fn valid_port(port: &str) -> bool {
    port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535))
}

fn extract_host(s: &str) -> Result<Extracted<'_>, InvalidObservable> {
    let (rest, has_scheme) = match strip_scheme(s) {
        Some(rest) => (rest, true),
        None => (s.strip_prefix("//").unwrap_or(s), false),
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let cidr_suffix = !has_scheme
        && tail.len() >= 2
        && tail.len() <= 4
        && tail.starts_with('/')
        && tail[1..].bytes().all(|b| b.is_ascii_digit());

    let host_port = if has_scheme {
        // userinfo is everything up to the last '@'
        authority.rsplit_once('@').map_or(authority, |(_, h)| h)
    } else {
        if authority.contains('@') || has_at_marker(authority) {
            return Err(InvalidObservable::Email { input: shown(s) });
        }
        authority
    };
    if host_port.is_empty() {
        return Err(InvalidObservable::NotAnObservable {
            input: shown(s),
            detail: "no host",
        });
    }

    let bracketed = host_port.starts_with('[');
    let host = if bracketed {
        bracketed_host(s, host_port)?
    } else {
        unbracketed_host(s, host_port)?
    };
    Ok(Extracted {
        host,
        bracketed,
        cidr_suffix,
    })
}

/// The IPv6 address of `[addr]` or `[addr]:port`, the port checked.
fn bracketed_host<'a>(s: &str, host_port: &'a str) -> Result<&'a str, InvalidObservable> {
    let inner = &host_port[1..];
    let Some((host, after)) = inner.split_once(']') else {
        return Err(InvalidObservable::InvalidIpv6 {
            input: shown(host_port),
        });
    };
    if !after.is_empty() {
        let port = after.strip_prefix(':').unwrap_or(after);
        if !after.starts_with(':') || !valid_port(port) {
            return Err(InvalidObservable::InvalidPort {
                input: shown(s),
                port: shown(after),
            });
        }
    }
    Ok(host)
}

/// The host of `host` or `host:port`, the port checked; an unbracketed IPv6 address cannot carry
/// a port, so with more than one `:` it is all host.
fn unbracketed_host<'a>(s: &str, host_port: &'a str) -> Result<&'a str, InvalidObservable> {
    let host = match host_port.matches(':').count() {
        0 => host_port,
        1 => {
            let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
            if !valid_port(port) {
                return Err(InvalidObservable::InvalidPort {
                    input: shown(s),
                    port: shown(port),
                });
            }
            host
        }
        _ => host_port,
    };
    if host.is_empty() {
        return Err(InvalidObservable::NotAnObservable {
            input: shown(s),
            detail: "no host",
        });
    }
    Ok(host)
}

// ---------------------------------------------------------------------------------------------
// Hosts: addresses and names
// ---------------------------------------------------------------------------------------------

enum ParsedHost {
    /// `mapped`: written as an IPv4-mapped IPv6 address.
    Ip { addr: IpAddr, mapped: bool },
    /// Canonical name.
    Name(String),
}

fn parse_host(host: &str, bracketed: bool) -> Result<ParsedHost, InvalidObservable> {
    if bracketed || host.contains(':') {
        return parse_ipv6(host);
    }
    if host.contains('*') {
        return Err(InvalidObservable::Wildcard { input: shown(host) });
    }
    // ASCII is checked before IDNA so that '%', ' ', '!'... get a precise error; what IDNA maps
    // non-ASCII to is checked again after.
    check_name_chars(host, |c| c.is_ascii())?;

    let ascii = Uts46::new()
        .to_ascii(
            host.as_bytes(),
            AsciiDenyList::URL,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| InvalidObservable::InvalidIdna { input: shown(host) })?;
    let mut name = ascii.into_owned();
    name.make_ascii_lowercase();
    if name.ends_with('.') {
        name.pop();
    }
    if name.is_empty() {
        return Err(InvalidObservable::NotAnObservable {
            input: shown(host),
            detail: "no host",
        });
    }
    check_name_chars(&name, |_| true)?;

    let last = name.rsplit('.').next().unwrap_or(&name);
    if is_numeric_label(last) {
        return parse_ipv4(&name).map(|a| ParsedHost::Ip {
            addr: IpAddr::V4(a),
            mapped: false,
        });
    }
    check_name(&name)?;
    Ok(ParsedHost::Name(name))
}

/// Every char `applies` to must be an ASCII letter, digit, `-`, `_` or `.`.
fn check_name_chars(s: &str, applies: impl Fn(char) -> bool) -> Result<(), InvalidObservable> {
    let bad = s
        .chars()
        .filter(|&c| applies(c))
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    match bad {
        Some('*') => Err(InvalidObservable::Wildcard { input: shown(s) }),
        Some(found) => Err(InvalidObservable::InvalidCharacter {
            input: shown(s),
            found,
        }),
        None => Ok(()),
    }
}

/// DNS rules for a lowercase ASCII name without a trailing dot.
fn check_name(name: &str) -> Result<(), InvalidObservable> {
    // One pass over the labels; the first rule broken, in this order, is the error.
    let (mut empty, mut too_long, mut hyphened) = (false, None, None);
    for label in name.split('.') {
        empty |= label.is_empty();
        if too_long.is_none() && label.len() > MAX_LABEL_LEN {
            too_long = Some(label);
        }
        if hyphened.is_none() && (label.starts_with('-') || label.ends_with('-')) {
            hyphened = Some(label);
        }
    }
    if empty {
        return Err(InvalidObservable::EmptyLabel { input: shown(name) });
    }
    if let Some(label) = too_long {
        return Err(InvalidObservable::LabelTooLong {
            label: shown(label),
            len: label.len(),
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidObservable::NameTooLong {
            input: shown(name),
            len: name.len(),
        });
    }
    if let Some(label) = hyphened {
        return Err(InvalidObservable::InvalidLabel {
            input: shown(name),
            label: shown(label),
        });
    }
    if !name.contains('.') {
        return Err(InvalidObservable::SingleLabel { input: shown(name) });
    }
    Ok(())
}

/// A label that makes a name an IPv4 address in the WHATWG URL standard: decimal digits, or `0x`
/// followed by hex digits.
fn is_numeric_label(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// A strict dotted quad; everything `inet_aton` would read differently from a person is an error.
fn parse_ipv4(s: &str) -> Result<Ipv4Addr, InvalidObservable> {
    let parts: Vec<&str> = s.split('.').collect();
    let invalid = |detail| InvalidObservable::InvalidIpv4 {
        input: shown(s),
        detail,
    };
    if !parts.iter().all(|p| is_numeric_label(p)) {
        return Err(invalid(
            "a name cannot end in a numeric label, and this is not an address",
        ));
    }
    if parts.len() > 4 {
        return Err(invalid("more than four parts"));
    }
    let hex = parts
        .iter()
        .any(|p| p.starts_with("0x") || p.starts_with("0X"));
    if parts.len() < 4 || hex {
        return Err(InvalidObservable::NonStandardIpv4 { input: shown(s) });
    }
    if parts.iter().any(|p| p.len() > 1 && p.starts_with('0')) {
        return Err(InvalidObservable::AmbiguousIpv4 { input: shown(s) });
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(&parts) {
        *octet = part
            .parse::<u8>()
            .map_err(|_| invalid("a part is over 255"))?;
    }
    Ok(Ipv4Addr::from(octets))
}

fn parse_ipv6(s: &str) -> Result<ParsedHost, InvalidObservable> {
    if s.contains('%') {
        return Err(InvalidObservable::Ipv6ZoneId { input: shown(s) });
    }
    let addr: Ipv6Addr = s
        .parse()
        .map_err(|_| InvalidObservable::InvalidIpv6 { input: shown(s) })?;
    Ok(match addr.to_ipv4_mapped() {
        Some(v4) => ParsedHost::Ip {
            addr: IpAddr::V4(v4),
            mapped: true,
        },
        None => ParsedHost::Ip {
            addr: IpAddr::V6(addr),
            mapped: false,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Domain or host
// ---------------------------------------------------------------------------------------------

/// Multi-label public suffixes under which a name one label longer is a registrable domain.
///
/// Only common ICANN suffixes: the full Public Suffix List is not embedded, so a name under a
/// suffix missing here (`foo.example.pvt.k12.ma.us`, `shop.com.ru`) and names under private-section
/// suffixes (`foo.github.io`, `foo.azurewebsites.net`) come out as hosts, not domains.
const MULTI_LABEL_SUFFIXES: &[&str] = &[
    "ac.il", "ac.in", "ac.jp", "ac.kr", "ac.nz", "ac.th", "ac.uk", "ac.za", "co.at", "co.id",
    "co.il", "co.in", "co.jp", "co.ke", "co.kr", "co.nz", "co.th", "co.uk", "co.za", "com.ar",
    "com.au", "com.br", "com.cn", "com.co", "com.eg", "com.es", "com.hk", "com.mx", "com.my",
    "com.ng", "com.pe", "com.ph", "com.pk", "com.pl", "com.sa", "com.sg", "com.tr", "com.tw",
    "com.ua", "com.vn", "edu.au", "edu.cn", "go.jp", "go.kr", "gob.mx", "gov.au", "gov.br",
    "gov.cn", "gov.in", "gov.uk", "gov.za", "govt.nz", "in.th", "ltd.uk", "me.uk", "ne.jp",
    "net.au", "net.br", "net.cn", "net.in", "net.nz", "or.at", "or.id", "or.jp", "or.kr", "org.au",
    "org.br", "org.cn", "org.in", "org.mx", "org.nz", "org.uk", "org.za", "plc.uk",
];

/// The kind of a canonical value: Domain when the name is a registrable domain (exactly one
/// label above a public suffix: `contoso.com`, `contoso.co.uk`), Host otherwise (`www.contoso.com`,
/// `_dmarc.contoso.com`, and a bare public suffix like `co.uk`).
///
/// Public suffixes are every TLD plus the short list in `MULTI_LABEL_SUFFIXES` (about 75 common
/// ICANN second-level suffixes such as `co.uk`, `com.au`, `co.jp`): this is not the full Public
/// Suffix List, so names under a rarer multi-label suffix, or a private one such as `github.io`,
/// are called hosts. [`normalise`] honours a kind the feed declared, which corrects that.
///
/// An IPv4 or IPv6 address gives Ipv4 or Ipv6. Case and one trailing dot are ignored.
pub fn detect_kind(canonical_name: &str) -> ObservableKind {
    let name = canonical_name.strip_suffix('.').unwrap_or(canonical_name);
    if name.parse::<Ipv4Addr>().is_ok() {
        return ObservableKind::Ipv4;
    }
    if name.parse::<Ipv6Addr>().is_ok() {
        return ObservableKind::Ipv6;
    }
    name_kind(name)
}

/// Domain or Host for a name known not to be an address, without a trailing dot. Every
/// counterpart of a chaining walk comes through here, so it allocates nothing.
fn name_kind(name: &str) -> ObservableKind {
    let mut dots = name.rmatch_indices('.').map(|(at, _)| at);
    let labels = name.bytes().filter(|&b| b == b'.').count() + 1;
    // The last two labels, `second.tld`: all of a two-label name, else what follows the second
    // dot from the end.
    let suffix_labels = match (dots.next(), dots.next()) {
        (Some(_), second) => {
            let pair = &name.as_bytes()[second.map_or(0, |at| at + 1)..];
            let listed = MULTI_LABEL_SUFFIXES.binary_search_by(|suffix| {
                suffix.bytes().cmp(pair.iter().map(u8::to_ascii_lowercase))
            });
            if listed.is_ok() {
                2
            } else {
                1
            }
        }
        (None, _) => 1,
    };
    if labels == suffix_labels + 1 {
        ObservableKind::Domain
    } else {
        ObservableKind::Host
    }
}

// ---------------------------------------------------------------------------------------------
// Non-public values
// ---------------------------------------------------------------------------------------------

/// IPv4 ranges MDTI has nothing useful to say about: (network, prefix length, reason). The first
/// match wins, so the broadcast address comes before 240/4.
const V4_NON_PUBLIC: &[(u32, u32, &str)] = &[
    (0x0000_0000, 8, "\"this network\" address (0.0.0.0/8)"),
    (0x0a00_0000, 8, "private address (10.0.0.0/8)"),
    (
        0x6440_0000,
        10,
        "shared address space, carrier-grade NAT (100.64.0.0/10)",
    ),
    (0x7f00_0000, 8, "loopback address (127.0.0.0/8)"),
    (0xa9fe_0000, 16, "link-local address (169.254.0.0/16)"),
    (0xac10_0000, 12, "private address (172.16.0.0/12)"),
    (0xc000_0000, 24, "IETF protocol assignment (192.0.0.0/24)"),
    (
        0xc000_0200,
        24,
        "documentation address (192.0.2.0/24, TEST-NET-1)",
    ),
    (0xc0a8_0000, 16, "private address (192.168.0.0/16)"),
    (0xc612_0000, 15, "benchmarking address (198.18.0.0/15)"),
    (
        0xc633_6400,
        24,
        "documentation address (198.51.100.0/24, TEST-NET-2)",
    ),
    (
        0xcb00_7100,
        24,
        "documentation address (203.0.113.0/24, TEST-NET-3)",
    ),
    (0xe000_0000, 4, "multicast address (224.0.0.0/4)"),
    (
        0xffff_ffff,
        32,
        "limited broadcast address (255.255.255.255/32)",
    ),
    (0xf000_0000, 4, "reserved address (240.0.0.0/4)"),
];

/// IPv6 ranges, as [`V4_NON_PUBLIC`]. 6to4 (2002::/16), Teredo (2001::/32) and NAT64
/// (64:ff9b::/96) are left public: they embed public IPv4 addresses.
const V6_NON_PUBLIC: &[(u128, u32, &str)] = &[
    (0, 128, "unspecified address (::/128)"),
    (1, 128, "loopback address (::1/128)"),
    (0, 96, "IPv4-compatible address, deprecated (::/96)"),
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        "discard-only address (100::/64)",
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "documentation address (2001:db8::/32)",
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "documentation address (3fff::/20)",
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        "unique local address (fc00::/7)",
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        "link-local address (fe80::/10)",
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        "site-local address, deprecated (fec0::/10)",
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        "multicast address (ff00::/8)",
    ),
];

/// Top-level domains (and `home.arpa`) that are special-use or private: names under them are
/// never in public DNS, so MDTI has nothing on them. (`example.com`, `.net` and `.org` are
/// ordinary, resolvable names and are not here.)
const NON_PUBLIC_SUFFIXES: &[(&str, &str)] = &[
    ("home.arpa", "home network name (RFC 8375)"),
    ("arpa", "infrastructure name (.arpa, e.g. reverse DNS)"),
    ("local", "multicast DNS name (.local, RFC 6762)"),
    ("localhost", "special-use name (.localhost, RFC 6761)"),
    ("invalid", "special-use name (.invalid, RFC 6761)"),
    ("test", "special-use name (.test, RFC 6761)"),
    ("example", "special-use name (.example, RFC 6761)"),
    ("onion", "Tor onion service name (.onion, RFC 7686)"),
    ("alt", "special-use name (.alt, RFC 9476)"),
    ("internal", "private-use name (.internal)"),
    ("lan", "private network name (.lan, not delegated)"),
    (
        "localdomain",
        "private network name (.localdomain, not delegated)",
    ),
    ("home", "private network name (.home, not delegated)"),
    ("corp", "private network name (.corp, not delegated)"),
];

fn prefix_mask_u32(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn prefix_mask_u128(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// Why an observable is not worth a Graph request, if it is not.
fn non_public_reason(o: &Observable) -> Option<String> {
    match o.kind {
        ObservableKind::Ipv4 => {
            let a = u32::from(o.value.parse::<Ipv4Addr>().ok()?);
            V4_NON_PUBLIC
                .iter()
                .find(|(net, len, _)| a & prefix_mask_u32(*len) == *net)
                .map(|(_, _, why)| (*why).to_string())
        }
        ObservableKind::Ipv6 => {
            let a = u128::from(o.value.parse::<Ipv6Addr>().ok()?);
            V6_NON_PUBLIC
                .iter()
                .find(|(net, len, _)| a & prefix_mask_u128(*len) == *net)
                .map(|(_, _, why)| (*why).to_string())
        }
        ObservableKind::Domain | ObservableKind::Host => NON_PUBLIC_SUFFIXES
            .iter()
            .find(|(suffix, _)| {
                o.value
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
            })
            .map(|(_, why)| (*why).to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<Normalised, InvalidObservable> {
        normalise(raw, None, &NormaliseOptions::default())
    }

    fn ready(raw: &str) -> Observable {
        match norm(raw) {
            Ok(Normalised::Ready(o)) => o,
            other => panic!("{raw:?}: expected ready, got {other:?}"),
        }
    }

    fn ready_value(raw: &str) -> String {
        ready(raw).value().to_string()
    }

    fn skipped(raw: &str) -> (Observable, String) {
        match norm(raw) {
            Ok(Normalised::Skipped { observable, reason }) => (observable, reason),
            other => panic!("{raw:?}: expected skipped, got {other:?}"),
        }
    }

    fn code(raw: &str) -> &'static str {
        code_as(raw, None)
    }

    fn code_as(raw: &str, declared: Option<ObservableKind>) -> &'static str {
        match normalise(raw, declared, &NormaliseOptions::default()) {
            Err(e) => e.code(),
            Ok(other) => panic!("{raw:?}: expected an error, got {other:?}"),
        }
    }

    fn err(raw: &str) -> InvalidObservable {
        norm(raw).expect_err(raw)
    }

    // --- kinds ---------------------------------------------------------------------------

    #[test]
    fn kind_names_round_trip_through_display_and_from_str() {
        for kind in ObservableKind::ALL {
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(kind.as_str().parse::<ObservableKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
    }

    #[test]
    fn kind_parsing_is_case_insensitive_with_host_aliases() {
        assert_eq!("IPv4".parse(), Ok(ObservableKind::Ipv4));
        assert_eq!("IPV6".parse(), Ok(ObservableKind::Ipv6));
        assert_eq!("Domain".parse(), Ok(ObservableKind::Domain));
        assert_eq!("hostname".parse(), Ok(ObservableKind::Host));
        assert_eq!("FQDN".parse(), Ok(ObservableKind::Host));
    }

    #[test]
    fn unknown_kind_error_names_the_value_and_the_valid_kinds() {
        let e = "ip".parse::<ObservableKind>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"ip\""), "{msg}");
        for kind in ObservableKind::ALL {
            assert!(msg.contains(kind.as_str()), "{msg}");
        }
        let long = "x".repeat(10_000);
        assert!(
            long.parse::<ObservableKind>()
                .unwrap_err()
                .to_string()
                .len()
                < 400
        );
    }

    // --- rule 1: trimming, emptiness, size, control characters ----------------------------

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(ready_value(" \t contoso.com \r\n"), "contoso.com");
    }

    #[test]
    fn empty_and_blank_values_are_errors() {
        assert_eq!(code(""), "empty");
        assert_eq!(code(" \t\n "), "empty");
    }

    #[test]
    fn oversized_input_is_rejected_first_and_not_echoed() {
        let huge = format!("{}.com", "a".repeat(10 * 1024 * 1024));
        let e = err(&huge);
        assert_eq!(e.code(), "too_long");
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
        // the limit is on the raw bytes, whitespace included
        let padded = format!("contoso.com{}", " ".repeat(MAX_INPUT_LEN));
        assert_eq!(code(&padded), "too_long");
    }

    #[test]
    fn control_characters_are_errors() {
        assert_eq!(code("conto\0so.com"), "control_character");
        assert_eq!(code("contoso\n.com"), "control_character");
        assert_eq!(code("contoso.com\u{7f}"), "control_character");
        assert_eq!(code("contoso.com\u{85}x"), "control_character");
    }

    #[test]
    fn error_messages_quote_the_input_safely() {
        let msg = err("conto\0so.com").to_string();
        assert!(msg.contains("\"conto\\0so.com\""), "{msg}");
        let long_label = format!("{}.com", "b".repeat(1500));
        let msg = err(&long_label).to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains("1500 bytes"), "{msg}");
    }

    #[test]
    fn an_error_about_the_host_of_a_longer_value_names_both() {
        let msg = err("../../etc/passwd").to_string();
        assert!(msg.contains("(the host of \"../../etc/passwd\")"), "{msg}");
        let msg = err("http://a..com/x").to_string();
        assert!(
            msg.ends_with("\"a..com\" (the host of \"http://a..com/x\")"),
            "{msg}"
        );
        let msg = err("a..com").to_string();
        assert!(!msg.contains("the host of"), "{msg}");
    }

    // --- rule 2: refanging ----------------------------------------------------------------

    #[test]
    fn defanged_domain_is_refanged() {
        assert_eq!(ready_value("evil[.]com"), "evil.com");
        assert_eq!(ready_value("evil(.)com"), "evil.com");
        assert_eq!(ready_value("evil{.}com"), "evil.com");
        assert_eq!(ready_value("evil[dot]com"), "evil.com");
        assert_eq!(ready_value("www(DOT)evil[.]com"), "www.evil.com");
    }

    #[test]
    fn defanged_ip_is_refanged() {
        assert_eq!(ready_value("8[.]8[.]8[.]8"), "8.8.8.8");
        assert_eq!(ready_value("2001[:]4860[:][:]8888"), "2001:4860::8888");
    }

    #[test]
    fn defanged_url_scheme_is_refanged() {
        assert_eq!(ready_value("hxxp://evil[.]com/x"), "evil.com");
        assert_eq!(ready_value("hXXps[://]evil[.]com/x"), "evil.com");
        assert_eq!(ready_value("hxxps[:]//evil[.]com"), "evil.com");
    }

    #[test]
    fn hxxp_inside_a_name_is_not_a_scheme() {
        assert_eq!(ready_value("hxxpfoo.com"), "hxxpfoo.com");
        assert_eq!(ready_value("hxxpü[.]com"), "xn--hxxp-3ra.com");
        assert_eq!(ready_value("HXXPs.com"), "hxxps.com");
    }

    #[test]
    fn defanged_at_sign_still_makes_an_email() {
        assert_eq!(code("user[at]evil[.]com"), "email");
        assert_eq!(code("user[@]evil.com"), "email");
        assert_eq!(code("user(AT)evil.com"), "email");
    }

    // --- rule 3: URLs, ports, paths, e-mail, hashes ---------------------------------------

    #[test]
    fn url_is_reduced_to_its_host() {
        assert_eq!(
            ready_value("https://user:pw@Evil.COM:8443/a/b?c=d#e"),
            "evil.com"
        );
        assert_eq!(ready_value("ftp://files.evil.com"), "files.evil.com");
        assert_eq!(ready_value("http://evil.com?q"), "evil.com");
        assert_eq!(ready_value("http://evil.com#f"), "evil.com");
        assert_eq!(ready_value("http://evil.com\\path"), "evil.com");
        assert_eq!(ready_value("//evil.com/path"), "evil.com");
    }

    #[test]
    fn userinfo_that_looks_like_a_host_is_dropped() {
        assert_eq!(ready_value("http://good.com@8.8.4.4/"), "8.8.4.4");
    }

    #[test]
    fn bare_host_with_port_or_path_is_reduced_to_the_host() {
        assert_eq!(ready_value("evil.com:8080"), "evil.com");
        assert_eq!(ready_value("evil.com/../../etc/passwd"), "evil.com");
        assert_eq!(ready_value("evil.com?x=http://other.com"), "evil.com");
        assert_eq!(
            ready_value("evil.com/redirect?u=http://other.com"),
            "evil.com"
        );
        assert_eq!(ready_value("8.8.8.8:53"), "8.8.8.8");
    }

    #[test]
    fn bad_ports_are_errors() {
        assert_eq!(code("evil.com:http"), "invalid_port");
        assert_eq!(code("evil.com:65536"), "invalid_port");
        assert_eq!(code("[2001:4860::8888]x"), "invalid_port");
        assert_eq!(ready_value("evil.com:"), "evil.com");
    }

    #[test]
    fn bracketed_ipv6_with_port_is_the_address() {
        assert_eq!(ready_value("[2001:4860::8888]:443"), "2001:4860::8888");
        assert_eq!(
            ready_value("https://[2001:4860::8888]:8443/x"),
            "2001:4860::8888"
        );
        assert_eq!(code("[evil.com]"), "invalid_ipv6");
        assert_eq!(code("[2001:4860::8888"), "invalid_ipv6");
    }

    #[test]
    fn values_without_a_host_are_errors() {
        assert_eq!(code("http:///path"), "not_an_observable");
        assert_eq!(code("/etc/passwd"), "not_an_observable");
        assert_eq!(code("."), "not_an_observable");
    }

    #[test]
    fn email_addresses_are_rejected() {
        let e = err("alice@contoso.com");
        assert_eq!(e.code(), "email");
        assert!(e.to_string().contains("e-mail addresses are not supported"));
        assert_eq!(code("mailto:alice@contoso.com"), "email");
    }

    #[test]
    fn file_hashes_are_rejected_and_named() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha1 = "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709";
        let sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for (hash, name) in [(md5, "MD5"), (sha1, "SHA-1"), (sha256, "SHA-256")] {
            let e = err(hash);
            assert_eq!(e.code(), "file_hash");
            let msg = e.to_string();
            assert!(
                msg.contains("file hashes are not supported") && msg.contains(name),
                "{msg}"
            );
        }
    }

    #[test]
    fn cidr_ranges_are_rejected() {
        assert_eq!(code("8.8.8.0/24"), "cidr_range");
        assert_eq!(code("2001:4860::/32"), "cidr_range");
        // but a URL path of digits is just a path
        assert_eq!(ready_value("http://8.8.8.8/24"), "8.8.8.8");
    }

    // --- rule 4: names --------------------------------------------------------------------

    #[test]
    fn names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(ready_value("WWW.Contoso.COM."), "www.contoso.com");
        assert_eq!(code("contoso.com.."), "empty_label");
    }

    #[test]
    fn unicode_names_become_punycode() {
        assert_eq!(ready_value("bücher.de"), "xn--bcher-kva.de");
        assert_eq!(ready_value("BÜCHER.de"), "xn--bcher-kva.de");
        assert_eq!(ready_value("XN--BCHER-KVA.DE"), "xn--bcher-kva.de");
        assert_eq!(ready_value("例え。jp"), "xn--r8jz45g.jp");
    }

    #[test]
    fn emoji_names_follow_idna_and_are_accepted() {
        // UTS 46 as browsers apply it (non-transitional, no STD3 rules) maps emoji labels to
        // punycode rather than rejecting them, so MDTI gets what a browser would have resolved.
        assert_eq!(ready_value("💩.la"), "xn--ls8h.la");
    }

    #[test]
    fn invalid_idna_is_an_error() {
        assert_eq!(code("xn--a.com"), "invalid_idna");
        assert_eq!(code("evil\u{fffd}.com"), "invalid_idna");
    }

    #[test]
    fn label_and_name_lengths_are_dns_limits() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        assert_eq!(ready_value(&format!("{l63}.com")), format!("{l63}.com"));
        assert_eq!(code(&format!("{l64}.com")), "label_too_long");
        let name253 = format!("{l63}.{l63}.{l63}.{}.com", "a".repeat(57));
        assert_eq!(name253.len(), 253);
        assert_eq!(ready_value(&name253), name253);
        assert_eq!(code(&format!("a.{name253}")), "name_too_long");
    }

    #[test]
    fn labels_are_ldh_with_underscores_allowed() {
        assert_eq!(ready_value("_dmarc.contoso.com"), "_dmarc.contoso.com");
        assert_eq!(
            ready_value("r3---sn-abc.googlevideo.com"),
            "r3---sn-abc.googlevideo.com"
        );
        assert_eq!(code("-evil.com"), "invalid_label");
        assert_eq!(code("evil-.com"), "invalid_label");
        assert_eq!(code("evil!.com"), "invalid_character");
        assert_eq!(code("evil .com"), "invalid_character");
        assert_eq!(code("evil%2ecom"), "invalid_character");
        assert_eq!(code("a..com"), "empty_label");
    }

    #[test]
    fn wildcards_are_rejected() {
        assert_eq!(code("*.evil.com"), "wildcard");
        assert_eq!(code("http://*.evil.com/"), "wildcard");
    }

    #[test]
    fn single_label_names_are_rejected() {
        let e = err("intranet");
        assert_eq!(e.code(), "single_label");
        assert!(e.to_string().contains("single-label name"));
        assert_eq!(code("localhost"), "single_label");
    }

    #[test]
    fn a_numeric_tld_makes_a_bad_ip_not_a_name() {
        assert_eq!(code("evil.123"), "invalid_ipv4");
        assert_eq!(code("1.2.3.4.5"), "invalid_ipv4");
        assert_eq!(code("1.2.3.256"), "invalid_ipv4");
        assert_eq!(ready_value("evil.123abc"), "evil.123abc");
    }

    // --- rule 5: addresses ----------------------------------------------------------------

    #[test]
    fn ipv4_is_a_canonical_dotted_quad() {
        let o = ready("8.8.8.8.");
        assert_eq!((o.kind(), o.value()), (ObservableKind::Ipv4, "8.8.8.8"));
        // full-width digits and dots are what IDNA says they are
        assert_eq!(ready_value("８．８．８．８"), "8.8.8.8");
    }

    #[test]
    fn ipv4_with_leading_zeros_is_ambiguous() {
        let e = err("010.8.8.8");
        assert_eq!(e.code(), "ambiguous_ipv4");
        assert!(e.to_string().contains("octal"));
        assert_eq!(code("8.8.8.08"), "ambiguous_ipv4");
    }

    #[test]
    fn integer_hex_and_short_ipv4_forms_are_rejected() {
        assert_eq!(code("3232235777"), "non_standard_ipv4");
        assert_eq!(code("0x7f.1"), "non_standard_ipv4");
        assert_eq!(code("127.1"), "non_standard_ipv4");
        assert_eq!(code("0x08.0x08.0x08.0x08"), "non_standard_ipv4");
    }

    #[test]
    fn ipv6_is_written_in_rfc_5952_form() {
        let o = ready("2001:4860:0000:0000:0000:0000:0000:8888");
        assert_eq!(
            (o.kind(), o.value()),
            (ObservableKind::Ipv6, "2001:4860::8888")
        );
        assert_eq!(
            ready_value("2001:4860:0:0:1:0:0:8888"),
            "2001:4860::1:0:0:8888"
        );
        assert_eq!(ready_value("2606:4700:4700::1111"), "2606:4700:4700::1111");
        assert_eq!(
            ready_value("2606:4700:4700:0:0:0:0:AbCd"),
            "2606:4700:4700::abcd"
        );
        assert_eq!(code("2001:4860::8888::1"), "invalid_ipv6");
        assert_eq!(code("2001:4860:zz::1"), "invalid_ipv6");
    }

    #[test]
    fn ipv6_zone_ids_are_rejected() {
        assert_eq!(code("fe80::1%eth0"), "ipv6_zone_id");
        assert_eq!(code("http://[fe80::1%25eth0]/"), "ipv6_zone_id");
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_ipv4_address() {
        let o = ready("::ffff:8.8.8.8");
        assert_eq!((o.kind(), o.value()), (ObservableKind::Ipv4, "8.8.8.8"));
        assert_eq!(ready_value("::FFFF:808:808"), "8.8.8.8");
        let (o, _) = skipped("::ffff:10.1.2.3");
        assert_eq!(o.value(), "10.1.2.3");
    }

    #[test]
    fn ipv4_mapped_ipv6_declared_ipv6_or_ipv4_is_accepted_as_ipv4() {
        for declared in [ObservableKind::Ipv6, ObservableKind::Ipv4] {
            let got = normalise(
                "::ffff:8.8.8.8",
                Some(declared),
                &NormaliseOptions::default(),
            );
            let o = got.unwrap().into_observable();
            assert_eq!((o.kind(), o.value()), (ObservableKind::Ipv4, "8.8.8.8"));
        }
    }

    // --- rule 6: declared kinds -----------------------------------------------------------

    #[test]
    fn declared_kind_must_agree_for_addresses() {
        use ObservableKind::*;
        assert_eq!(code_as("8.8.8.8", Some(Domain)), "kind_mismatch");
        assert_eq!(code_as("8.8.8.8", Some(Ipv6)), "kind_mismatch");
        assert_eq!(code_as("2606:4700::1111", Some(Ipv4)), "kind_mismatch");
        assert_eq!(code_as("contoso.com", Some(Ipv4)), "kind_mismatch");
        let msg = normalise("8.8.8.8", Some(Host), &NormaliseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("host") && msg.contains("ipv4"), "{msg}");
    }

    #[test]
    fn declared_domain_or_host_is_honoured_for_any_name() {
        use ObservableKind::*;
        let opts = NormaliseOptions::default();
        let o = normalise("www.contoso.com", Some(Domain), &opts).unwrap();
        assert_eq!(o.observable().kind(), Domain);
        let o = normalise("contoso.com", Some(Host), &opts).unwrap();
        assert_eq!(o.observable().kind(), Host);
        let o = normalise("8.8.8.8", Some(Ipv4), &opts).unwrap();
        assert_eq!(o.observable().kind(), Ipv4);
    }

    // --- rule 7: domain or host -----------------------------------------------------------

    #[test]
    fn registrable_names_are_domains_and_subdomains_hosts() {
        use ObservableKind::*;
        assert_eq!(detect_kind("contoso.com"), Domain);
        assert_eq!(detect_kind("www.contoso.com"), Host);
        assert_eq!(detect_kind("contoso.co.uk"), Domain);
        assert_eq!(detect_kind("www.contoso.co.uk"), Host);
        assert_eq!(detect_kind("contoso.uk"), Domain);
        assert_eq!(detect_kind("co.uk"), Host);
        assert_eq!(detect_kind("_dmarc.contoso.com"), Host);
        assert_eq!(detect_kind("Contoso.CO.JP."), Domain);
        assert_eq!(detect_kind("8.8.8.8"), Ipv4);
        assert_eq!(detect_kind("2606:4700::1111"), Ipv6);
        assert_eq!(ready("www.contoso.com.au").kind(), Host);
        assert_eq!(ready("contoso.com.au").kind(), Domain);
    }

    #[test]
    fn suffix_list_is_sorted_for_binary_search() {
        assert!(MULTI_LABEL_SUFFIXES.windows(2).all(|w| w[0] < w[1]));
        assert!(MULTI_LABEL_SUFFIXES.len() >= 40);
    }

    // --- rule 8: non-public ---------------------------------------------------------------

    #[test]
    fn private_and_reserved_ipv4_is_skipped_with_the_range() {
        for (ip, range) in [
            ("0.1.2.3", "0.0.0.0/8"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("127.0.0.1", "127.0.0.0/8"),
            ("169.254.169.254", "169.254.0.0/16"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.0.2.1", "192.0.2.0/24"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("198.19.0.1", "198.18.0.0/15"),
            ("198.51.100.7", "198.51.100.0/24"),
            ("203.0.113.9", "203.0.113.0/24"),
            ("239.255.255.250", "224.0.0.0/4"),
            ("255.255.255.255", "255.255.255.255/32"),
            ("250.1.1.1", "240.0.0.0/4"),
        ] {
            let (o, reason) = skipped(ip);
            assert_eq!(o.value(), ip);
            assert!(reason.contains(range), "{ip}: {reason}");
        }
        let (_, reason) = skipped("10.0.0.1");
        assert_eq!(reason, "private address (10.0.0.0/8)");
    }

    #[test]
    fn ipv4_range_edges_are_exact() {
        for ip in [
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "198.20.0.1",
            "11.0.0.1",
            "223.255.255.255",
        ] {
            ready(ip);
        }
    }

    #[test]
    fn non_public_ipv6_is_skipped_with_the_range() {
        for (ip, range) in [
            ("::", "::/128"),
            ("::1", "::1/128"),
            ("::102:304", "::/96"),
            ("100::1", "100::/64"),
            ("2001:db8::1", "2001:db8::/32"),
            ("3fff::1", "3fff::/20"),
            ("fd12:3456::1", "fc00::/7"),
            ("fe80::1", "fe80::/10"),
            ("fec0::1", "fec0::/10"),
            ("ff02::1", "ff00::/8"),
        ] {
            let (_, reason) = skipped(ip);
            assert!(reason.contains(range), "{ip}: {reason}");
        }
        // 6to4, Teredo and NAT64 stay public
        ready("2002:c000:204::1");
        ready("2001:0:4136:e378::1");
        ready("64:ff9b::808:808");
    }

    #[test]
    fn names_under_reserved_tlds_are_skipped() {
        for name in [
            "printer.local",
            "app.localhost",
            "db.internal",
            "x.invalid",
            "foo.test",
            "www.example",
            "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion",
            "4.3.2.1.in-addr.arpa",
            "router.home.arpa",
            "nas.lan",
        ] {
            let (o, reason) = skipped(name);
            assert_eq!(o.value(), name);
            assert!(!reason.is_empty());
        }
        let (_, reason) = skipped("router.home.arpa");
        assert!(reason.contains("RFC 8375"), "{reason}");
        // a name merely containing a reserved word is public
        ready("local.contoso.com");
        ready("mytest.com");
    }

    #[test]
    fn example_domains_are_ready() {
        ready("example.com");
        ready("www.example.org");
        ready("example.net");
    }

    #[test]
    fn allow_non_public_makes_skipped_values_ready() {
        let opts = NormaliseOptions {
            allow_non_public: true,
        };
        for raw in ["10.0.0.1", "::1", "printer.local", "::ffff:192.168.0.1"] {
            assert!(normalise(raw, None, &opts).unwrap().is_ready(), "{raw}");
        }
    }

    // --- rule 9: the canonical alphabet ---------------------------------------------------

    #[test]
    fn canonical_values_are_one_safe_path_segment() {
        for raw in [
            "https://user:pw@Evil.COM:8443/a/b?c=d#e",
            "bücher.de/%2f..%2f",
            "[2001:4860::8888]:443/x?y#z",
            "_dmarc.contoso.com",
            "💩.la",
            "::ffff:8.8.8.8",
        ] {
            let value = ready_value(raw);
            assert!(is_safe_canonical(&value), "{raw} -> {value}");
            for bad in ['/', '?', '#', '%', ' ', '\\'] {
                assert!(!value.contains(bad), "{raw} -> {value}");
            }
        }
        assert!(!is_safe_canonical(""));
        assert!(!is_safe_canonical("a/b"));
        assert!(!is_safe_canonical("A.com"));
    }

    // --- the rest -------------------------------------------------------------------------

    #[test]
    fn observable_displays_as_kind_colon_value() {
        assert_eq!(ready("www.contoso.com").to_string(), "host:www.contoso.com");
        assert_eq!(ready("2606:4700::1111").to_string(), "ipv6:2606:4700::1111");
    }

    #[test]
    fn observable_serde_round_trips_and_deserialising_validates() {
        let o = ready("www.contoso.com");
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, r#"{"kind":"host","value":"www.contoso.com"}"#);
        assert_eq!(serde_json::from_str::<Observable>(&json).unwrap(), o);
        // re-canonicalised on the way in, non-public allowed
        let o: Observable =
            serde_json::from_str(r#"{"kind":"domain","value":"WWW.Contoso.com."}"#).unwrap();
        assert_eq!(
            (o.kind(), o.value()),
            (ObservableKind::Domain, "www.contoso.com")
        );
        let o: Observable = serde_json::from_str(r#"{"kind":"ipv4","value":"10.0.0.1"}"#).unwrap();
        assert_eq!(o.value(), "10.0.0.1");
        assert!(
            serde_json::from_str::<Observable>(r#"{"kind":"ipv4","value":"contoso.com"}"#).is_err()
        );
        assert!(serde_json::from_str::<Observable>(r#"{"kind":"host","value":"a b"}"#).is_err());
    }

    #[test]
    fn every_error_code_is_listed_and_distinct() {
        let mut codes = InvalidObservable::CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), InvalidObservable::CODES.len());
        for raw in ["", "a..com", "*.a.com", "a@b.com", "localhost", "127.1"] {
            assert!(InvalidObservable::CODES.contains(&err(raw).code()));
        }
    }
}

//! Graph records → indicators and extracts, field by field as the enricher specification gives:
//! each enricher's mapping, gathered under one name. Pure functions: no I/O, so every rule is
//! pinned by a test on a literal payload.

pub use super::host::host;
pub use super::host_pair::host_pairs;
pub use super::passive_dns::passive_dns;
pub use super::reputation::reputation;
pub use super::subdomains::subdomains;
pub use super::whois::{indicator_id, whois};

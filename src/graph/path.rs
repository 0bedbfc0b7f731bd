//! How a value is put into one segment of a Graph URL path, for the token endpoint (a tenant
//! id) and the API alike (a host key, a profile id).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Characters that must be escaped in one URL path segment: everything but RFC 3986 unreserved.
/// A host key can therefore never add a path segment, a query or a fragment.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

//! Caps on Graph answer bodies; they are read by [`crate::http_body::read_capped`].

pub(crate) use crate::http_body::{read_capped, size, BodyError};

/// The default cap on one Graph answer: a page of 1,000 passive DNS records is well under 1 MiB.
pub const MAX_GRAPH_BODY: usize = 16 << 20;

/// Error bodies only give a code for the log.
pub(crate) const MAX_ERROR_BODY: usize = 64 << 10;

/// Token answers are a few kilobytes.
pub(crate) const MAX_TOKEN_BODY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_named_in_the_unit_they_were_set_in() {
        assert_eq!(size(MAX_GRAPH_BODY), "16 MiB");
        assert_eq!(size(MAX_ERROR_BODY), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}

//! Answer bodies read in chunks up to a cap, so that no server, broken or hostile, can make the
//! client hold more than the cap in memory for one answer (Graph's and TAXII servers' alike).

/// The most room reserved for an answer on the word of its `Content-Length` alone.
const PRESIZE_LIMIT: usize = 1 << 20;

/// Why a body was not read whole.
pub(crate) enum BodyError {
    /// Longer than the cap (declared so, or found so while reading).
    TooLarge,
    Read(reqwest::Error),
}

/// The whole body, or `TooLarge` as soon as it is known to pass `cap` bytes.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    // Room for the declared length up front, so a long answer is not copied over and over as
    // it grows, nor held in a buffer up to twice its size; a declared length is only believed up
    // to PRESIZE_LIMIT, so a server announcing much and sending little costs no more than that.
    let presize = declared.map_or(0, |length| {
        usize::try_from(length).map_or(PRESIZE_LIMIT, |length| length.min(PRESIZE_LIMIT))
    });
    let mut body = Vec::with_capacity(presize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `16 MiB`, `64 KiB` or `1000 bytes`: a cap as an error message names it.
pub(crate) fn size(bytes: usize) -> String {
    match bytes {
        0 => "0 bytes".to_owned(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

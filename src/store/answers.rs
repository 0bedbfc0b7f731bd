//! Answer digests: a re-enrichment whose answer is the one stored leaves its extracts alone.
//!
//! Every (observable, enricher) result carries a digest of the extract rows its answer writes
//! (`enricher_results.answer_digest`). Before a batch writes extracts of observables stored
//! earlier, it reads their digests in one statement:
//! - the same digest: the rows are there already, so they are not written again (re-upserting
//!   them only moved `last_seen_at`, about 74 row updates per re-enrichment);
//! - another digest: the answer changed. Rows the stored answer had are first stamped with the
//!   stored `fetched_at` (the last fetch that saw them), then the new answer is written as
//!   before.
//!
//! `unchanged_since` (when the answer took its current form) beside `fetched_at` (when it was
//! last confirmed) lets the view `extracts_seen` give each row its last sighting (migration
//! 0017). Two batches of one observable at once both see the old digest and both write: the
//! digest decides only whether to skip a write, never what is written.

use foldhash::{HashMap, HashSet, HashSetExt};
use sha1::{Digest, Sha1};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;

/// (observable id, enricher): one enricher result.
pub(super) type ResultKey = (i64, &'static str);

/// The namespace of answer digests: a name-based UUID (v5) is SHA-1 cut to 16 bytes, a stable
/// digest stored beside each result.
const DIGEST_NAMESPACE: Uuid = Uuid::from_u128(0x6d64_7469_2d61_6e73_7765_722d_6469_6765);

/// Digests of the extract rows of each result, each result's rows taken in their order (the
/// rows of different results may interleave). `results` are every result written: one without
/// extracts has the digest of no rows.
pub(super) fn digests<'k>(
    results: impl Iterator<Item = ResultKey>,
    rows: impl Iterator<Item = (ResultKey, [&'k str; 3], Option<&'k str>)>,
) -> HashMap<ResultKey, Uuid> {
    let mut named: HashMap<ResultKey, Sha1> = results.map(|key| (key, name_hasher())).collect();
    for (key, [kind, value, field], country_code) in rows {
        let hasher = named.entry(key).or_insert_with(name_hasher);
        // NUL never occurs in stored text (see pg_text), so it separates fields unambiguously;
        // an absent country code differs from an empty one.
        for part in [kind, value, field, country_code.unwrap_or("\u{1}")] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
    }
    named
        .into_iter()
        .map(|(key, hasher)| (key, name_based(hasher)))
        .collect()
}

/// The rows are hashed as they come rather than gathered first into one name for
/// `Uuid::new_v5`, which gives the same digest: SHA-1 over the namespace, then the name. The
/// `sha1` crate uses the CPU's SHA instructions where it has them, `uuid`'s own SHA-1 does not;
/// hashing the rows had been 2.5 % of a run's instructions.
fn name_hasher() -> Sha1 {
    Sha1::new_with_prefix(DIGEST_NAMESPACE.as_bytes())
}

fn name_based(hasher: Sha1) -> Uuid {
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&hasher.finalize()[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Of `digests` (results of observables stored before this transaction), those whose stored
/// answer is the same. Rows of the others that the stored answer had are stamped with its
/// `fetched_at` first, so that a row the new answer drops keeps its true last sighting.
pub(super) async fn unchanged(
    tx: &mut Transaction<'_, Postgres>,
    digests: &HashMap<ResultKey, Uuid>,
) -> Result<HashSet<ResultKey>, StoreError> {
    if digests.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: Vec<(&ResultKey, &Uuid)> = digests.iter().collect();
    let observable_ids: Vec<i64> = keys.iter().map(|(key, _)| key.0).collect();
    let enrichers: Vec<&str> = keys.iter().map(|(key, _)| key.1).collect();
    let new_digests: Vec<Uuid> = keys.iter().map(|(_, &digest)| digest).collect();
    // (position in `keys`, same digest, confirmed by a fetch after it took its form)
    let stored: Vec<(i64, bool, bool)> = sqlx::query_as(
        "SELECT u.i, r.answer_digest = u.digest, r.fetched_at > r.unchanged_since \
         FROM enricher_results r \
         JOIN UNNEST($1::bigint[], $2::text[], $3::uuid[]) \
             WITH ORDINALITY AS u(observable_id, enricher, digest, i) \
             USING (observable_id, enricher) \
         WHERE r.answer_digest IS NOT NULL",
    )
    .bind(&observable_ids)
    .bind(&enrichers)
    .bind(&new_digests)
    .fetch_all(&mut **tx)
    .await?;
    let mut same = HashSet::new();
    let (mut stamp_ids, mut stamp_enrichers) = (Vec::new(), Vec::new());
    for (position, unchanged, confirmed_since) in stored {
        let Some(&(&key, _)) = usize::try_from(position - 1).ok().and_then(|i| keys.get(i)) else {
            continue;
        };
        if unchanged {
            same.insert(key);
        } else if confirmed_since {
            stamp_ids.push(key.0);
            stamp_enrichers.push(key.1);
        }
    }
    stamp_last_sightings(tx, &stamp_ids, &stamp_enrichers).await?;
    Ok(same)
}

/// Rows written since the stored answer took its form were seen until its last fetch.
async fn stamp_last_sightings(
    tx: &mut Transaction<'_, Postgres>,
    observable_ids: &[i64],
    enrichers: &[&str],
) -> Result<(), StoreError> {
    if observable_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE extracts x SET last_seen_at = r.fetched_at \
         FROM UNNEST($1::bigint[], $2::text[]) AS u(observable_id, enricher) \
         JOIN enricher_results r USING (observable_id, enricher) \
         WHERE x.observable_id = u.observable_id AND x.enricher = u.enricher \
             AND x.last_seen_at >= r.unchanged_since AND x.last_seen_at < r.fetched_at",
    )
    .bind(observable_ids)
    .bind(enrichers)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(rows: &[([&str; 3], Option<&str>)]) -> Uuid {
        let key = (1, "Whois");
        let rows = rows.iter().map(|&(text, code)| (key, text, code));
        digests(std::iter::once(key), rows)[&key]
    }

    #[test]
    fn the_same_rows_give_the_same_digest() {
        let rows = [(["EMAIL", "a@b.c", "abuse.email"], None)];
        assert_eq!(digest_of(&rows), digest_of(&rows));
    }

    #[test]
    fn any_change_of_a_row_changes_the_digest() {
        let base = digest_of(&[(["COUNTRY", "Ireland", "country"], Some("IE"))]);
        for changed in [
            digest_of(&[(["COUNTRY", "Ireland", "country"], None)]),
            digest_of(&[(["COUNTRY", "Ireland", "country"], Some(""))]),
            digest_of(&[(["COUNTRY", "Irelan", "dcountry"], Some("IE"))]),
            digest_of(&[]),
        ] {
            assert_ne!(base, changed);
        }
    }

    #[test]
    fn a_digest_is_the_name_based_uuid_of_the_rows_as_stored_digests_were_made() {
        let rows = [
            (["EMAIL", "a@b.c", "abuse.email"], None),
            (["COUNTRY", "Ireland", "country"], Some("IE")),
        ];
        let name = "EMAIL\0a@b.c\0abuse.email\0\u{1}\0COUNTRY\0Ireland\0country\0IE\0";
        assert_eq!(
            digest_of(&rows),
            Uuid::new_v5(&DIGEST_NAMESPACE, name.as_bytes())
        );
        assert_eq!(digest_of(&[]), Uuid::new_v5(&DIGEST_NAMESPACE, b""));
    }

    #[test]
    fn a_result_without_extracts_has_a_digest_too() {
        let key = (7, "Host");
        let found = digests(std::iter::once(key), std::iter::empty());
        assert_eq!(found.len(), 1);
        assert_eq!(found[&key], digest_of(&[]));
    }
}

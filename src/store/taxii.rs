//! TAXII cursors (`migrations/0018_taxii_cursors.sql`): how far each collection has been pulled.
//! The caller reads the cursor before a pull and advances it only once the pulled objects were
//! handled (the ordering is `taxii.rs`'s module comment).

use super::{Store, StoreError};
use crate::taxii::{Collection, Cursor};

impl Store {
    /// The stored cursor of `collection`; none before its first advance.
    pub async fn taxii_cursor(
        &self,
        collection: &Collection,
    ) -> Result<Option<Cursor>, StoreError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT added_after FROM taxii_cursors WHERE api_root = $1 AND collection_id = $2",
        )
        .bind(collection.api_root())
        .bind(collection.id())
        .fetch_optional(&self.pool)
        .await?;
        text.map(|text| {
            Cursor::parse(&text).map_err(|e| StoreError::Decode {
                what: "TAXII cursor",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Stores `cursor` for `collection` unless the stored one is later, and returns the one
    /// stored: a pull that finished after a newer one never moves the cursor back. Times are
    /// compared as timestamps (the texts may differ in precision).
    pub async fn advance_taxii_cursor(
        &self,
        collection: &Collection,
        cursor: &Cursor,
    ) -> Result<Cursor, StoreError> {
        sqlx::query(
            "INSERT INTO taxii_cursors (api_root, collection_id, added_after) VALUES ($1, $2, $3) \
             ON CONFLICT (api_root, collection_id) DO UPDATE \
             SET added_after = EXCLUDED.added_after, updated_at = now() \
             WHERE EXCLUDED.added_after::timestamptz >= taxii_cursors.added_after::timestamptz",
        )
        .bind(collection.api_root())
        .bind(collection.id())
        .bind(cursor.as_str())
        .execute(&self.pool)
        .await?;
        self.taxii_cursor(collection)
            .await?
            .ok_or_else(|| StoreError::Decode {
                what: "TAXII cursor",
                detail: "the row written is gone".into(),
            })
    }
}

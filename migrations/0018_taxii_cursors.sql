-- How far each TAXII collection has been pulled: the newest date added whose objects were
-- handled, sent back as `added_after=` by the next pull. Keyed by the API root's URL (never
-- with credentials: the URL may not carry any) and the collection's id. The date is the
-- server's own text, kept at the precision the server compares it at; the code checks it is an
-- RFC 3339 timestamp before storing it, and never moves it back.
CREATE TABLE taxii_cursors (
    api_root text NOT NULL,
    collection_id text NOT NULL,
    added_after text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_root, collection_id)
);

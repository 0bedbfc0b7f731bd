-- The worker's record of what it enriched, read by dashboards.
--
-- Every write is an upsert keyed on something the input determines (an observable's kind and
-- value, a message id and item index, a Graph id), so a redelivered message rewrites the same
-- rows instead of adding new ones. Timestamps are timestamptz and written with the database's
-- clock (now()), so workers with skewed clocks still agree on freshness.

-- The things feeds ask about, once each whatever the number of messages that named them.
CREATE TABLE observables (
    id               bigserial   PRIMARY KEY,
    -- Lowercase names of ObservableKind.
    kind             text        NOT NULL CHECK (kind IN ('ipv4', 'ipv6', 'domain', 'host')),
    -- Canonical form (refanged, lowercased, compressed IPv6), so one thing is one row.
    value            text        NOT NULL,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    -- Null until some message actually called Graph for it (cached and skipped runs do not count).
    last_enriched_at timestamptz,
    CONSTRAINT observables_kind_value_key UNIQUE (kind, value)
);

-- One row per item of a message: what the worker did with it and what it cost.
CREATE TABLE enrichment_runs (
    -- UUIDv5 over (message_id, item_index): a redelivery computes the same id.
    id             uuid        PRIMARY KEY,
    message_id     text        NOT NULL,
    -- Position of the observable in the message.
    item_index     integer     NOT NULL,
    observable_id  bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    -- Who asked (a feed name), and whatever opaque context the producer attached.
    source         text,
    context        jsonb,
    -- enriched: Graph was called; cached: every enricher was fresh; skipped: not enriched (see detail).
    status         text        NOT NULL CHECK (status IN ('enriched', 'cached', 'skipped')),
    detail         text,
    enrichers      text[]      NOT NULL DEFAULT '{}',
    graph_requests integer     NOT NULL DEFAULT 0 CHECK (graph_requests >= 0),
    duration_ms    integer     NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- At-least-once delivery: the same message may arrive twice, it must land once.
    CONSTRAINT enrichment_runs_message_item_key UNIQUE (message_id, item_index)
);
-- "Runs of this observable, newest first".
CREATE INDEX enrichment_runs_observable_created_idx ON enrichment_runs (observable_id, created_at DESC);
-- Time-window dashboards (runs per hour, Graph requests per day) and retention.
CREATE INDEX enrichment_runs_created_idx ON enrichment_runs (created_at);

-- The last fetch of each enricher for each observable. The worker's cache reads fetched_at: an
-- observable is not sent to Graph again while all its enrichers are younger than the TTL. A "not
-- found" (found = false) is a fetch too, so unknown hosts are not asked about again and again.
CREATE TABLE enricher_results (
    observable_id bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    enricher      text        NOT NULL
        CHECK (enricher IN ('whois', 'passive_dns', 'host', 'host_pair', 'subdomains', 'reputation')),
    found         boolean     NOT NULL,
    -- A page cap cut the walk: Graph has more records than were stored.
    truncated     boolean     NOT NULL DEFAULT false,
    fetched_at    timestamptz NOT NULL DEFAULT now(),
    -- The run that fetched it; kept if runs are pruned, only the link is lost.
    run_id        uuid        REFERENCES enrichment_runs (id) ON DELETE SET NULL,
    PRIMARY KEY (observable_id, enricher)
);

-- Whois indicators, keyed by Graph's own id ({https://graph.microsoft.com}Indicator-<uuid>).
CREATE TABLE indicators (
    id                text        PRIMARY KEY,
    observable_id     bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    title             text        NOT NULL,
    description       text,
    threat_start_time timestamptz,
    threat_end_time   timestamptz,
    observed_time     timestamptz,
    "timestamp"       timestamptz,
    labels            text[]      NOT NULL DEFAULT '{}',
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    run_id            uuid        REFERENCES enrichment_runs (id) ON DELETE SET NULL
);
CREATE INDEX indicators_observable_idx ON indicators (observable_id);

-- What enrichers pulled out of Graph records: addresses, hosts, e-mails, registrars...
-- An extract that a later fetch no longer returns is kept: last_seen_at says how stale it is.
CREATE TABLE extracts (
    id            bigserial   PRIMARY KEY,
    observable_id bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    enricher      text        NOT NULL,
    -- ExtractKind names: IPV4, HOST, EMAIL, COUNTRY, ...
    kind          text        NOT NULL,
    value         text        NOT NULL,
    -- The Graph field it came from (registrant.email vs abuse.email).
    field         text        NOT NULL,
    -- ISO 3166-1 alpha-2 for COUNTRY extracts whose text was recognised.
    country_code  text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    run_id        uuid        REFERENCES enrichment_runs (id) ON DELETE SET NULL,
    CONSTRAINT extracts_observable_enricher_kind_value_field_key
        UNIQUE (observable_id, enricher, kind, value, field)
);
-- Pivot from an extract (an e-mail, a name server) to every observable that has it.
CREATE INDEX extracts_kind_value_idx ON extracts (kind, value);

-- Reputation by host value rather than observable id: chaining caches the reputation of
-- counterparts (resolutions, host pairs) that were never observables themselves.
CREATE TABLE reputations (
    host           text        PRIMARY KEY,
    classification text,
    score          integer,
    -- The rules as Graph explained them ([{name, description, severity, related_details_url}]).
    rules          jsonb       NOT NULL DEFAULT '[]',
    fetched_at     timestamptz NOT NULL DEFAULT now()
);

-- Inputs the worker could not use, so a feed owner can see what and why.
CREATE TABLE rejected_inputs (
    id          bigserial   PRIMARY KEY,
    message_id  text        NOT NULL,
    -- -1 for a whole message that could not be decoded.
    item_index  integer     NOT NULL,
    -- At most 1,000 characters of what was sent, lossily decoded: enough to recognise it,
    -- bounded so a hostile feed cannot fill the disk.
    input       text        NOT NULL,
    -- A stable machine-readable code (for grouping), and the human reason.
    code        text        NOT NULL,
    reason      text        NOT NULL,
    source      text,
    context     jsonb,
    attempts    integer     NOT NULL DEFAULT 1,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    -- A redelivered message updates its rejection instead of adding another.
    CONSTRAINT rejected_inputs_message_item_key UNIQUE (message_id, item_index)
);
CREATE INDEX rejected_inputs_rejected_at_idx ON rejected_inputs (rejected_at);

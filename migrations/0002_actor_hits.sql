-- Infrastructure chaining and actor attribution (src/chain.rs, src/store/actors.rs).
--
-- Intelligence profiles and their indicators are a local copy of Graph's `intelProfiles`,
-- refreshed by a sync job, so a walk can match every IOC and counterpart against every actor's
-- indicators without a Graph request per IOC. Actor hits are what the walks attributed, once per
-- (observable, actor, linking artifact) however many runs found them.

-- Actor profiles (kind `actor` only), keyed by Graph's id.
CREATE TABLE intel_profiles (
    id           text        PRIMARY KEY,
    title        text        NOT NULL,
    aliases      text[]      NOT NULL DEFAULT '{}',
    first_active timestamptz,
    synced_at    timestamptz NOT NULL DEFAULT now()
);
-- Name lookups ("which profile is this group?") are case-insensitive.
CREATE INDEX intel_profiles_title_lower_idx ON intel_profiles (lower(title));

-- A profile's indicators; `artifact` in canonical form (lowercase name, canonical IP), the form
-- the walk compares with.
CREATE TABLE intel_profile_indicators (
    profile_id    text        NOT NULL REFERENCES intel_profiles (id) ON DELETE CASCADE,
    artifact      text        NOT NULL,
    -- ipAddress, hostname, or whatever @odata.type Graph sent, short and lowercase.
    artifact_type text,
    -- microsoft, osint, public.
    source        text,
    first_seen    timestamptz,
    last_seen     timestamptz,
    synced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, artifact)
);
-- Pivot from an artifact to the profiles that list it.
CREATE INDEX intel_profile_indicators_artifact_idx ON intel_profile_indicators (artifact);

-- One row per (observable, actor, linking artifact): evidence merged over runs.
CREATE TABLE actor_hits (
    id            bigserial   PRIMARY KEY,
    observable_id bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    actor         text        NOT NULL,
    -- The intelligence profile the actor was matched to (title or alias), if any.
    profile_id    text,
    aliases       text[]      NOT NULL DEFAULT '{}',
    -- The domain or IP that links the observable to the actor.
    artifact      text        NOT NULL,
    -- observable → ... → artifact.
    path          text[]      NOT NULL DEFAULT '{}',
    -- [{"source": "reputation_rule" | "intel_article" | "profile_indicator", ...}]
    evidence      jsonb       NOT NULL DEFAULT '[]',
    -- From the passive DNS records linking the artifact.
    first_seen    timestamptz,
    last_seen     timestamptz,
    -- The run that last found it (crate::store::run_id of the message and item), if any. No
    -- foreign key: the hits may be written before the run row of the same message.
    run_id        uuid,
    context       jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT actor_hits_observable_actor_artifact_key UNIQUE (observable_id, actor, artifact)
);
-- Dashboards: hits per actor, observables sharing an artifact, hits over time.
CREATE INDEX actor_hits_actor_idx ON actor_hits (actor);
CREATE INDEX actor_hits_artifact_idx ON actor_hits (artifact);
CREATE INDEX actor_hits_created_idx ON actor_hits (created_at);

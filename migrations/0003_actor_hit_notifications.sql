-- Actor-hit events go out through an outbox: a hit stays "pending" until the broker confirmed
-- its event. A delivery that stored hits but failed to publish their events is redelivered, and
-- the redelivery finds the hits still pending and announces them then: no event is lost between
-- the commit and the publish.
ALTER TABLE actor_hits ADD COLUMN notified_at timestamptz;

-- Hits stored before this column existed were announced when they were stored.
UPDATE actor_hits SET notified_at = created_at;

CREATE INDEX actor_hits_pending_idx ON actor_hits (id) WHERE notified_at IS NULL;

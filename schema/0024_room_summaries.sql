-- A room's summary for /sync (m.joined_member_count, m.invited_member_count,
-- m.heroes), kept up to date by the persister in the transaction that
-- changes the room's current state, so a sync reads one row per room
-- instead of counting the members of a big room.
-- heroes_*: the first few joined / invited user ids by code point; NULL
-- until the next membership change computes them (readers then read them
-- from current_state).
CREATE TABLE IF NOT EXISTS room_summaries (
    room_id TEXT PRIMARY KEY,
    joined_members BIGINT NOT NULL,
    invited_members BIGINT NOT NULL,
    heroes_joined TEXT[],
    heroes_invited TEXT[]
);

-- The counts of the rooms that exist already (idempotent: rooms with a row
-- keep it).
INSERT INTO room_summaries (room_id, joined_members, invited_members)
SELECT room_id,
       count(CASE WHEN membership = 'join' THEN 1 END),
       count(CASE WHEN membership = 'invite' THEN 1 END)
FROM current_state WHERE type = 'm.room.member'
GROUP BY room_id
ON CONFLICT (room_id) DO NOTHING;

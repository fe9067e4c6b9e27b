-- A room's state events of one type, outliers included, without reading
-- every event of the room: the history-visibility reads of /sync,
-- /messages and /context (storage/event_listings.py history_visibility_changes and
-- rooms_with_restricted_history) ran over the whole room through
-- events_by_room_stream. Partial: messages (state_key NULL), most of the
-- writes, do not pay for it. CockroachDB has partial indexes since 20.2.
CREATE INDEX IF NOT EXISTS events_state_by_type ON events (room_id, type, state_key) WHERE state_key IS NOT NULL;

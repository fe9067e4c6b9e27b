-- State groups take their id from the stream position of the event that
-- starts them (then storage/events.py; since 0011 they come from
-- state_group_id_seq, storage/room_state.py); this sequence was never used.
DROP SEQUENCE IF EXISTS state_group_seq;

-- State groups take their id from the stream position of the event that
-- starts them (storage/events.py); this sequence was never used.
DROP SEQUENCE IF EXISTS state_group_seq;

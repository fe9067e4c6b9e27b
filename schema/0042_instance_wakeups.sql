-- Wake-ups between instances (services/instances.py): where an instance
-- takes them (a UDP "host:port") and the key one must carry, so that only
-- readers of this table can wake it. NULL: it takes none, and finds the
-- other instances' writes by its position poll alone.
ALTER TABLE instance_leases ADD COLUMN IF NOT EXISTS wake_addr TEXT;
ALTER TABLE instance_leases ADD COLUMN IF NOT EXISTS wake_key TEXT;

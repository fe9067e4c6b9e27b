-- Members already in a remote room when our server joined it (outliers from
-- send_join's state, without a stream position) had no room_memberships row,
-- so nobody counted as sharing the room with them (device lists,
-- /keys/changes). The persister now writes such rows when a membership
-- event enters the current state; this gives rooms joined before that the
-- rows they lack, at the room's first join row (our server's first join).
INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
SELECT c.event_id, c.state_key, c.room_id, e.sender, c.membership, f.first_pos
FROM current_state c
JOIN events e ON e.event_id = c.event_id
JOIN (SELECT room_id, min(stream_pos) AS first_pos FROM room_memberships WHERE membership = 'join'
      GROUP BY room_id) f ON f.room_id = c.room_id
WHERE c.type = 'm.room.member' AND c.membership IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM room_memberships m WHERE m.event_id = c.event_id)
ON CONFLICT (event_id) DO NOTHING;

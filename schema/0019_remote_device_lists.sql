-- Device-list update ids (`stream_id` of m.device_list_update EDUs and of
-- GET /user/devices answers) seen for users on other servers, so that an
-- update whose `prev_id` names an id we have not seen triggers a resync.
-- Only the newest few ids per user are kept.
CREATE TABLE IF NOT EXISTS e2e_remote_device_list_ids (
    user_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_id)
);

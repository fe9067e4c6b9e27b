"""The commented config file `coffeechat-home init` writes."""

CONFIG_TEMPLATE = """\
# coffeechat-home configuration. Every setting is optional; the values
# shown are the defaults. Environment variables override this file:
# COFFEECHAT_<KEY> or COFFEECHAT_<SECTION>_<KEY>, e.g. COFFEECHAT_DATABASE_URL.

# The name users and other servers know this homeserver by. It appears in
# every user id (@alice:{server_name}) and cannot change later.
server_name = "{server_name}"

# Where the embedded database, signing key and media live (relative paths
# are relative to this file). Without a config file every command uses
# ./coffeechat-data in the current folder.
data_dir = "{data_dir}"

# The server's ed25519 signing key; default <data_dir>/signing.key.
# signing_key_path = ""

# The URL clients reach this server at, served in /.well-known/matrix/client.
# public_baseurl = "https://matrix.example.org/"

# Development mode: opens registration unless registration.mode is set.
dev_mode = {dev_mode}

# Several instances may share one database and serve this homeserver; give
# each its own name (`serve --instance-name` sets it too).
instance_name = "main"
# Where the other instances send this one wake-ups after their writes (UDP,
# "host" or "host:port"); empty: the client listener's host, unless that is
# 0.0.0.0 or :: (then set an address the other instances reach). Without
# wake-ups, instances see each other's writes at the next position poll.
instance_address = ""
instance_poll_ms = 100

log_level = "INFO"
# "auto" (readable lines on a terminal, JSON lines otherwise), "text" or "json".
log_format = "auto"
# Requests slower than this (ms) are always logged, at WARNING.
slow_request_ms = 1000

[client_listener]
host = "127.0.0.1"
port = 8008

[federation_listener]
enabled = false
host = "127.0.0.1"
port = 8448
# Required when enabled (other servers speak only HTTPS); with --dev and
# none set, a self-signed certificate is made in data_dir once.
# tls_certificate_path = "/path/to/fullchain.pem"
# tls_private_key_path = "/path/to/privkey.pem"

[federation]
# Outbound federation never connects to private, loopback or link-local
# addresses unless their range is listed (tests on one machine: "127.0.0.0/8").
allow_private_addresses = []
# Verify other servers' TLS certificates (false only for tests).
verify_peer_certificates = true
# Servers asked for another server's keys when it cannot be reached itself.
trusted_key_servers = []
# What /.well-known/matrix/server names ("host:port"); empty: the server
# name's host with the federation listener's port.
well_known_server = ""
request_timeout_s = 30.0
max_response_bytes = 10485760
# Outbound sender: wait after a failed send (ms), doubling up to the maximum.
destination_min_retry_ms = 10000
destination_max_retry_ms = 3600000
# Receiving: most missing events asked for at once (get_missing_events).
missing_events_limit = 20
# Join remote rooms with a partial state (the member list comes afterwards).
partial_state_joins = true
partial_state_retry_ms = 5000

[registration]
# "open", "token" (one of `tokens`, or one made with the admin API) or "closed".
mode = "{registration_mode}"
# tokens = ["a-long-random-string"]

[database]
# Any PostgreSQL-wire URL: PostgreSQL or CockroachDB, e.g.
# url = "postgresql://user:pass@host:26257/coffeechat?sslmode=verify-full&sslrootcert=/ca.crt"
# Empty: use COCKROACH_HOSTNAME, COCKROACH_PORT, COCKROACH_USERNAME,
# COCKROACH_PASSWORD, COCKROACH_DATABASE, COCKROACH_CA_CERT_PATH,
# COCKROACH_CLIENT_CERT_PATH, COCKROACH_CLIENT_KEY_PATH and
# COCKROACH_CLUSTER if set, else an embedded PostgreSQL in data_dir.
# Several hosts: postgresql://user@crdb1:26257,crdb2:26257,crdb3:26257/db
# (tried in order), or COCKROACH_HOSTNAME=crdb1,crdb2,crdb3.
# A client certificate: ...&sslcert=/client.crt&sslkey=/client.key
url = ""
pool_min_size = 2
pool_max_size = 20
# concurrent sends to different rooms share one transaction and commit
group_commit = true
# transactions of sends open at once: lone sends side by side, shared ones one at a time
group_commit_transactions = 2

[limits]
max_request_body_bytes = 1048576
login_per_second = 1.0
login_burst = 10
register_per_second = 0.5
register_burst = 5

[security]
# scrypt cost for password hashes (a power of two).
password_scrypt_n = 32768
# Hashes computed at once (32 MiB each at the default cost); 0 = one per core.
password_hash_concurrency = 0

[presence]
# Off: presence updates are accepted and ignored; everyone appears offline.
enabled = true

[user_directory]
# Search all local users, not only those sharing a room with the searcher
# or joined to public rooms.
search_all_users = false

[media]
# File bodies by content hash; empty: <data_dir>/media. Instances on
# several machines must share this folder.
store_path = ""
# Largest upload (bytes); clients read it as m.upload.size.
max_upload_bytes = 52428800
# Bytes each user may store in all; 0 = no quota.
user_quota_bytes = 0
# Unauthenticated /_matrix/media/v3/download|thumbnail serve only media
# created before this time (ms since the epoch); 0 = none (the spec's freeze).
unauthenticated_cutoff_ts = 0
# /media/v1/create: time to upload (ms) and pending URIs per user.
unused_expiry_ms = 86400000
max_pending_uploads = 10
# Images larger than this many pixels are never decoded for thumbnails.
max_image_pixels = 32000000
thumbnail_concurrency = 2
# Other servers' files (fetched over federation, cached): largest size
# (bytes; 0 = max_upload_bytes) and the longest one fetch may take (s).
max_remote_bytes = 0
remote_fetch_timeout_s = 300.0

[metrics]
# Prometheus metrics (requests by route and status, latency, events
# persisted, sync wake-ups, database pool, password-hash queue). Off by
# default. Served at `path` on the client listener (public there!), or
# with separate_listener = true on host:port only.
enabled = false
path = "/metrics"
separate_listener = false
host = "127.0.0.1"
port = 9092
# X-Coffeechat-Timing on /sync responses (monotonic timestamps of the
# wake-up path, for the fan-out benchmark).
sync_timing = false

[web]
# The built-in web chat page at / and the admins' room DAG viewer at
# /_coffeechat/admin/rooms/<room id>/dag. Unset: on in dev mode, off
# otherwise.
# enabled = true
"""

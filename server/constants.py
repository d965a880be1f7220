"""Every limit, default and name of the server, named once."""

from __future__ import annotations

import re

SCHEMA_VERSION = 7

# Environment names and labels: any 1..MAX_NAME_LENGTH characters but these, compared exactly (as the original
# accepted any name). The control characters (C0, DEL, C1), written so that both Python's `re` and the ECMA
# regular expressions of JSON Schema (openapi.py) read them.
MAX_NAME_LENGTH = 200
NAME_CONTROL_CHARACTERS = r"\u0000-\u001f\u007f-\u009f"
# Lone surrogates too: no UTF-8 text carries them, so they could never be stored (they arrive only from Python).
# And U+FFFD, what a URL's bytes that are not UTF-8 decode to: a name `\xff` must be refused, not become "\ufffd".
NAME_NOT_UTF8 = "\ufffd"
NAME_REFUSED = re.compile(rf"[{NAME_CONTROL_CHARACTERS}\ud800-\udfff{NAME_NOT_UTF8}]")
MAX_SLOTS = 1000
MAX_HOLDER_LENGTH = 200
MAX_REQUEST_ID_LENGTH = 100
MAX_METADATA_BYTES = 4096
MAX_BODY_BYTES = 64 * 1024
MAX_DESCRIPTION_LENGTH = 2000
MAX_NOTE_LENGTH = 2000
MAX_PROPERTIES = 100
MAX_PROPERTY_VALUE_LENGTH = 2000
MAX_LABELS = 50
# A request for several environments at once (`all`): this many parts at least and at most.
MIN_PARTS = 2
MAX_PARTS = 8
# Priorities are bounded so that they always fit the stores' 64-bit integers.
MIN_PRIORITY = -1_000_000
MAX_PRIORITY = 1_000_000
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 100

DEFAULT_PORT = 8000
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - a server is meant to be reached; tests bind 127.0.0.1
NO_AUTH_HOST = "127.0.0.1"  # with CALL_ME_NO_AUTH and no CALL_ME_HOST
DEFAULT_DATABASE = "call-me.db"
DEFAULT_TTL = 3600
DEFAULT_MAX_TTL = 86400
DEFAULT_MAYBE_TTL = 6 * 3600
DEFAULT_MAX_WAIT = 25.0
DEFAULT_TICKET_GRACE = 60.0

# What one connection may cost before it has sent a whole request (server/connections.py). Every parked
# long-poll and every /v1/events stream holds a connection, so the cap leaves room for the 10,000 parked
# waiters bench/run.py holds; it is lowered at start-up to what the open-file limit allows, after
# RESERVED_FILES for the store, the listening socket, the log and the connections being refused.
DEFAULT_MAX_CONNECTIONS = 16_384
DEFAULT_READ_TIMEOUT = 10.0  # seconds from a request's first byte until it has arrived whole
DEFAULT_IDLE_TIMEOUT = 30.0  # seconds a connection may stay open with no request on it
MAX_HEAD_BYTES = 32 * 1024  # request line and header fields together, as nginx's default 4 x 8k buffers
MAX_HEAD_FIELDS = 100  # as Apache's LimitRequestFields
MAX_METHOD_LENGTH = 32  # a method httptools does not know, answered 405 (the longest registered one has 17)
RESERVED_FILES = 64
REFUSAL_LINGER = 1.0  # seconds a refused connection is read and discarded so that its answer is not reset
# A log record at WARNING or above is written at most LOG_REPEATS times per LOG_REPEAT_WINDOW seconds for the
# same logger and message (server/logfilter.py); the rest are counted and the count is told on the next one.
LOG_REPEATS = 3
LOG_REPEAT_WINDOW = 1.0

# How often the background task looks for leases and tickets past their deadline.
SWEEP_INTERVAL = 0.25
# Time (server/clock.py). The heartbeat beats every PAUSE_BEAT s; a beat PAUSE_THRESHOLD s late means the process
# was not running (stopped, frozen, its host suspended), and the start-up floor is raised as after a start-up.
# The threshold is far above any hold-up of a healthy event loop, so that a busy server does not keep putting
# off its deadlines, and below the margin a holder renewing a short lease (ttl 5 s, every 1.5 s) leaves itself.
PAUSE_BEAT = 0.25
PAUSE_THRESHOLD = 2.0
# A reading of PostgreSQL's clock that moved this much more (or less) than the replica's elapsed time since the
# last reading is a step, and is taken out. Well below any sensible ticket_grace; far above the drift of a
# disciplined clock between two readings a fraction of a second apart.
CLOCK_STEP_TOLERANCE = 0.5
# Operations that share one SQLite commit at most (group commit): bounds the wait of the last one in a batch.
MAX_BATCH = 256
# History (events, ended leases, ended tickets) is kept CALL_ME_HISTORY_DAYS, never less than this: a repeated
# request_id finds what it made for at least 24 h after its ticket ended (API.md).
REQUEST_ID_RETENTION = 24 * 3600
DEFAULT_HISTORY_DAYS = 90
DEFAULT_AUTO_FORGET_DAYS = 30  # an auto-created environment unused this long is forgotten
MAX_RETENTION_DAYS = 100 * 365
# The background prune (service_history.py): how often it runs (the first time a minute after start-up, out of
# the way of the clients coming back after a restart); how many rows (environments, for the forgetting) one of
# its transactions deletes at most, at least and at first; and how long one should take: each next batch is
# sized by how long the last one took. Between two, it pauses PRUNE_PAUSE times as long as the last one took.
PRUNE_INTERVAL = 3600
PRUNE_FIRST_DELAY = 60
PRUNE_BATCH = 1000
FORGET_BATCH = 100
PRUNE_MIN_BATCH = 20
PRUNE_FIRST_BATCH = 100
PRUNE_TARGET = 0.01  # seconds
PRUNE_PAUSE = 3
# Event details that metrics read back: an `acquired` event that served a ticket after it waited in the queue,
# and the `environment_changed` event of an environment created by a first request (tests/test_metrics.py).
WAITED = "waited {:.3f} s in the queue"
AUTO_CREATED = "created on first request"
# The detail of the `environment_deleted` event of an auto-created environment forgotten by the background prune.
FORGOTTEN = "forgotten: created on first request and unused for {} days (CALL_ME_AUTO_FORGET_DAYS)"

# Readiness (store/health.py): /readyz answers from what the last write attempts showed; when none was made for
# this long (an idle server, or one whose last write failed), it first tries a small write of its own, at most
# one per this long, since /readyz needs no key.
READY_PROBE_INTERVAL = 1.0
# SQLite (store/sqlite_file.py): the database file's identity is checked before every commit that wrote, and at
# least this often while transactions run (the sweeper runs one every SWEEP_INTERVAL), so that a removed file
# is noticed and said in the log even while nobody writes.
IDENTITY_CHECK_INTERVAL = 1.0
# SQLite: how far ahead of the fence and seq counters the high-water mark file beside the database is written.
# Once per this many grants (or tickets) it is rewritten (two fsyncs); a crash leaves a gap of at most this
# many numbers, which nothing minds: fences and seqs only need to grow.
HIGH_WATER_RESERVE = 1000

# PostgreSQL: connections (and worker threads) per replica, how long one statement may wait for a lock,
# how often an operation is re-run after a serialization failure or deadlock, and how often a parked
# long-poll looks again, since wake-ups from other replicas are hints (LISTEN) or absent (poll-only mode).
PG_CONNECTIONS = 8
PG_CONNECT_TIMEOUT = 5
PG_LOCK_TIMEOUT = 10.0
PG_RETRIES = 12
PG_RETRY_BACKOFF_FIRST = 0.004  # seconds; the longest pause after the first conflict, doubled after each ...
PG_RETRY_BACKOFF_MAX = 0.1  # ... up to this; the pause itself is drawn at random below it
PG_RECHECK = 2.0
PG_RECHECK_POLL_ONLY = 0.5
PG_CHANNEL = "callme"

# The server secret (server/secret.py): the least length of CALL_ME_SECRET (or of its file's content), the random
# bytes of a secret made at first start, and the name of that file beside a SQLite database.
MIN_SECRET_LENGTH = 32
SECRET_BYTES = 32
SECRET_FILE_SUFFIX = ".secret"  # noqa: S105 - a file name, not a password

ADMIN_KEY_NAME = "admin"
MIN_KEY_LENGTH = 8  # keys of the config file; a shorter API_KEY is warned about
NO_AUTH_NAME = "anonymous"

ROLES = ("read", "client", "admin")

# The dashboard, server-sent events and metrics.
DEFAULT_SSE_HEARTBEAT = 15.0  # seconds between comment lines that keep proxies from closing an idle stream
SSE_BUFFER = 256  # events held per SSE client; one that falls further behind is dropped (it resumes by id)
SSE_MAX_CLIENTS = 1000
SSE_REPLAY_PAGE = 500
SSE_RETRY_MS = 3000
SESSION_TTL = 12 * 3600  # a dashboard session ends this long after sign-in ...
SESSION_IDLE = 2 * 3600  # ... or after this long unused
MAX_SESSIONS = 10_000
FORM_TOKEN_TTL = 2 * 3600  # a form's token made without a session (sign-in) is good this long; then reload
UTILISATION_WINDOW = 24 * 3600
UTILISATION_EVENTS = 5000  # at most this many recent events are read for the dashboard's summary
AUTO_ENVIRONMENTS = "_auto"  # the metrics' one label value for every auto-created environment
LABEL_TICKETS = "_label"  # ... and for a ticket that named a label rather than an environment

# Webhooks (server/webhooks.py, server/delivery.py). Events a hook may ask for; the time-based ones fire once per
# lease or ticket, when it has been held or waiting longer than its environment's threshold (or these defaults).
WEBHOOK_EVENTS = (
    "lease.held_too_long",
    "queue.waiting_too_long",
    "lease.forced",
    "lease.expired",
    "environment.maintenance",
)
WEBHOOK_FORMATS = ("json", "slack")
DEFAULT_HELD_TOO_LONG = 4 * 3600.0  # seconds a lease may be held before lease.held_too_long
DEFAULT_WAITING_TOO_LONG = 30 * 60.0  # seconds a ticket may wait before queue.waiting_too_long
MIN_ALERT_THRESHOLD = 1.0
MAX_WEBHOOKS = 100
MAX_WEBHOOK_URL_LENGTH = 2000
MIN_WEBHOOK_SECRET_LENGTH = 16
MAX_WEBHOOK_SECRET_LENGTH = 200
# Delivery: one attempt may take DEFAULT_WEBHOOK_TIMEOUT s; a failed one is tried again after BACKOFF s, doubled
# after each failure up to BACKOFF_MAX, and given up after ATTEMPTS attempts in all (about 25 minutes with the
# defaults). A claimed delivery is the claimer's for the timeout and CLAIM_MARGIN more; a replica that died with
# it leaves it to be claimed again after that.
DEFAULT_WEBHOOK_TIMEOUT = 10.0
DEFAULT_WEBHOOK_BACKOFF = 2.0
DEFAULT_WEBHOOK_BACKOFF_MAX = 300.0
DEFAULT_WEBHOOK_ATTEMPTS = 10
WEBHOOK_CLAIM_MARGIN = 5.0
WEBHOOK_POLL_INTERVAL = 1.0  # how often the deliverer looks for deliveries due (retries, other replicas' rows)
WEBHOOK_CONCURRENCY = 8  # attempts in flight at once per replica ...
WEBHOOK_PER_HOOK = 2  # ... and for one hook: a receiver that hangs never takes every slot
WEBHOOK_ALERT_INTERVAL = 1.0  # how often the sweep looks for leases held and tickets waiting too long ...
ALERT_BATCH = 100  # ... and how many of each it announces at most per look
MAX_DELIVERY_LOG = 200
DEFAULT_DELIVERY_LOG = 50
DASHBOARD_DELIVERIES = 20  # per hook on the dashboard's webhooks page
MAX_WEBHOOK_ERROR_LENGTH = 300

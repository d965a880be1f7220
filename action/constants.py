"""Every name, default and limit of the client and the CLI, named once."""

from __future__ import annotations

import enum

# Configuration: ours first, then the original call-me-client's names.
ENV_URL = "CALL_ME_URL"
ENV_API_KEY = "CALL_ME_API_KEY"
ENV_ORIGINAL_HOST = "HOST"
ENV_ORIGINAL_API_KEY = "API_KEY"
ENV_STATE_FILE = "CALL_ME_STATE_FILE"
ENV_RETRY_FOR = "CALL_ME_RETRY_FOR"

# What `run` exports to the command it runs.
EXPORT_ENVIRONMENT = "CALL_ME_ENVIRONMENT"
EXPORT_LEASE_ID = "CALL_ME_LEASE_ID"
EXPORT_LEASE_TOKEN = "CALL_ME_LEASE_TOKEN"  # noqa: S105 - a variable name, not a secret
EXPORT_FENCE = "CALL_ME_FENCE"
EXPORT_EXPIRES_AT = "CALL_ME_EXPIRES_AT"
EXPORT_PROPERTY_PREFIX = "CALL_ME_PROPERTY_"
# A group of several environments (`--and`): its id and token, then each lease's variables prefixed by the name.
EXPORT_GROUP_ID = "CALL_ME_GROUP_ID"
EXPORT_GROUP_TOKEN = "CALL_ME_GROUP_TOKEN"  # noqa: S105 - a variable name, not a secret

HEADER_API_KEY = "X-API-KEY"
HEADER_LEASE_TOKEN = "X-Lease-Token"  # noqa: S105 - a header name, not a secret
PROBLEM_MEDIA_TYPE = "application/problem+json"

# Seconds. The server holds a long-poll at most its `max_wait` (25 s by default) and says so;
# asking for the same keeps every round below common proxy idle timeouts.
LONG_POLL = 25.0
# Added to a long-poll's `wait` for the read timeout, so a slow answer is not taken for a lost one.
LONG_POLL_READ_MARGIN = 15.0
REQUEST_TIMEOUT = 15.0
# How long one call keeps retrying connection errors, timeouts and 502/503/504 before it gives up.
RETRY_FOR = 60.0
RETRY_BACKOFF_FIRST = 0.25
RETRY_BACKOFF_MAX = 8.0
# Leaving the queue or releasing after an interrupt must not hold the user up for long.
CLEANUP_RETRY_FOR = 10.0

# `request` leaves nothing behind to renew the lease, so it asks for a long one (the
# original's leases never expired at all); `run` renews, so a short TTL frees the
# environment soon after a runner dies.
REQUEST_DEFAULT_TTL = 6 * 3600
RUN_DEFAULT_TTL = 300
# Renew when a third of the TTL has passed: two more chances before the lease expires.
RENEW_FRACTION = 1 / 3

STATE_FILE_NAME = "leases.json"


class ExitCode(enum.IntEnum):
    """The CLI's exit codes; `run` exits with its command's code instead when the command ran."""

    OK = 0
    ERROR = 1  # any other error answered by the server
    USAGE = 2  # bad arguments, missing configuration, input the server refused (400/422)
    NOT_GRANTED = 3  # --no-wait and the environment is busy or in maintenance
    WAIT_TIMEOUT = 4  # --timeout passed while waiting in the queue (the queue was left)
    UNREACHABLE = 5  # the server could not be reached or was unavailable, even after retries
    NOT_ALLOWED = 6  # the key was refused (401), lacks the role (403) or the lease token is wrong
    GONE = 7  # the environment, lease or ticket does not exist or has ended
    LEASE_LOST = 8  # `run`: the command succeeded but the lease could not be kept while it ran
    INTERRUPTED = 130  # SIGINT (128 + 2); SIGTERM gives 143

"""Redis key names, defaults and the numbers the scheduler is tuned by, each with its reason.

Every key the service writes starts with ``KEY_PREFIX`` so that one Redis can be shared with other
applications and ``SCAN taskorch:*`` shows everything that is ours.
"""

from __future__ import annotations

KEY_PREFIX = "taskorch:"

# -- Redis keys --------------------------------------------------------------------------------
# The deferred work, laid out as arq lays out its queue: members are job ids, scores the due time
# in epoch ms, and each job's definition ({"t", "f", "a", "k", "et"}, as JSON) lives at
# JOB_KEY_PREFIX + job_id. arq's own tools cannot read it (they read pickles under "arq:job:"),
# and we do not use arq: see taskorch/worker.py for why we claim jobs ourselves.
QUEUE_KEY = KEY_PREFIX + "queue"
JOB_KEY_PREFIX = KEY_PREFIX + "job:"
# Jobs claimed by a worker: member job id, score the epoch ms at which the claim lapses unless the
# worker renews it. A lapsed claim means the worker died; any worker's reaper then recovers it.
LEASES_KEY = KEY_PREFIX + "leases"
# Hash job id -> worker id, so a worker renews only its own claims.
LEASE_OWNER_KEY = KEY_PREFIX + "lease-owner"
TASK_KEY_PREFIX = KEY_PREFIX + "task:"  # hash per task; ":attempts" suffix holds the attempt list
ORCH_KEY_PREFIX = KEY_PREFIX + "orc:"  # hash per orchestration; :specs, :conds, :state, :check:<i>
OWNER_KEY_PREFIX = KEY_PREFIX + "owner:"  # per-owner indexes: owner:{sub}:tasks[:{status}]
IDEMPOTENCY_KEY_PREFIX = KEY_PREFIX + "idem:"
USER_KEY_PREFIX = KEY_PREFIX + "user:"
EVENTS_CHANNEL_PREFIX = KEY_PREFIX + "events:"  # pub/sub channel per owner, for /v1/events
WAKE_CHANNEL = KEY_PREFIX + "wake"  # published when work becomes due sooner than a worker's poll
METRICS_KEY = KEY_PREFIX + "metrics"  # hash of counters shared by all workers
WORKERS_KEY = KEY_PREFIX + "workers"  # zset worker id -> last heartbeat ms, for /metrics

# -- Defaults (the contract's) -----------------------------------------------------------------
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_BACKOFF = 2.0
MAX_BACKOFF = 1000.0  # beyond this every retry waits max_retry_delay anyway
DEFAULT_MAX_RETRY_DELAY_S = 300.0
DEFAULT_TIMEOUT_S = 30.0
MAX_RETRIES = 100
MAX_TIMEOUT_S = 900.0
RETRY_JITTER = 0.10  # retries are lengthened by up to 10 %, never shortened
IDEMPOTENCY_TTL_S = 24 * 3600
RESPONSE_EXCERPT_BYTES = 4096  # attempts keep the first 4 KiB of the answer
MAX_BODY_BYTES = 1024 * 1024  # request bodies above this answer 413
# An orchestration of 10,000 steps is a few MB of JSON; its route alone accepts this much.
MAX_ORCHESTRATION_BODY_BYTES = 32 * 1024 * 1024
MAX_STEPS = 10_000
MAX_FUNCTION_CODE_BYTES = 512 * 1024  # one source file
FUNCTION_KEY_PREFIX = KEY_PREFIX + "fn:"  # hash per function
FUNCTION_BUILDING_KEY = KEY_PREFIX + "fn-building"  # set of functions whose build must finish
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 50
DEFAULT_TOKEN_TTL_S = 3600
MIN_JWT_SECRET_BYTES = 32

# -- Scheduler tuning --------------------------------------------------------------------------
# How far ahead of its due time a worker claims a job. Claiming early is what lets a job fire
# from a precise in-process timer instead of waiting for the next poll; it must be longer than
# the poll interval so that every job is claimed before it is due.
CLAIM_AHEAD_MS = 1000
# How often a worker looks for newly due jobs when nobody woke it. New work that is due sooner
# than this is announced on WAKE_CHANNEL, so the poll only bounds how late a lost wake-up can be.
POLL_INTERVAL_S = 0.25
CLAIM_BATCH = 1000  # jobs per claim round trip
# How long before its due time a task's compare-and-set to "running" is made, so that the Redis
# round trip is over when the call is due. From then on a cancel or modify answers 409: the call
# is committed and goes out at the due time, never before.
START_LEAD_MS = 2
# A claim lapses this long after its due time unless renewed: the bound on how long a task whose
# worker died waits before another worker retries it. Configurable with TASKORCH_LEASE_S.
DEFAULT_LEASE_S = 30.0
# A worker whose calls keep failing with "worker lost" (it died mid-call again and again) would
# never finish; after this many lost attempts the task fails instead of looping forever.
MAX_LOST_ATTEMPTS = 5
REAP_INTERVAL_S = 1.0
FINISH_BATCH = 500  # outcome writes per pipeline
# Finished tasks and orchestrations are kept this long, then deleted by the workers' janitor:
# Redis runs with noeviction, so unbounded history would end in refused writes. A week, like
# the history most schedulers keep; TASKORCH_RETENTION_S=0 keeps everything.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_MAX_IN_FLIGHT = 20_000  # calls one worker runs at once before it stops claiming

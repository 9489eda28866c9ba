"""Redis key names, defaults and the numbers the scheduler is tuned by, each with its reason.

Every key the service writes starts with ``KEY_PREFIX`` so that one Redis can be shared with other
applications and ``SCAN taskorch:*`` shows everything that is ours.
"""

from __future__ import annotations

KEY_PREFIX = "taskorch:"

# -- Redis keys --------------------------------------------------------------------------------
# Everything written per task or orchestration lives in one partition, under the partition's
# prefix ``taskorch:{<tag>}:`` (see taskorch/partitions.py), so Redis Cluster can hold it: the
# suffixes below follow that prefix. Nothing global is written per task.
PARTITIONS_KEY = KEY_PREFIX + "partitions"  # the partition count, recorded at first start
DEFAULT_PARTITIONS = 16  # TASKORCH_PARTITIONS, read only when a deployment first starts
MAX_PARTITIONS = 1024
MIGRATE_PROGRESS_EVERY = 10_000  # taskorch migrate logs its progress every this many tasks
# The deferred work, shaped as arq shapes its queue: members are job ids, scores the due time in
# epoch ms. A task's job is ``<task id>.<generation>`` and has no definition of its own (the claim
# reads the task record); an orchestration event's definition ({"f", "a"}, JSON) is at ``j:<job>``.
QUEUE = "q"
JOB = "j:"
# Jobs claimed by a worker: member job id, score the epoch ms at which the claim lapses unless the
# worker renews it. A lapsed claim means the worker died; any worker's reaper then recovers it.
LEASES = "l"
LEASE_OWNER = "lo"  # hash job id -> worker id, so a worker renews only its own claims
# What one claim took (cr:<claim id>: its jobs and due times, JSON, kept for a lease), so that a
# worker that lost the claim's reply adopts them in its next claim (lua/claim.lua).
CLAIM_RECORD = "cr:"
# A task record: ONE msgpack string with short field names, defaults left out (see lua/lib/prelude.lua);
# ``:a`` holds its attempts list.
TASK = "t:"
ORCH = "o:"  # hash per orchestration; :specs, :conds, :state, :check:<i>
TASK_INDEX = "i:"  # i:<owner>:<status>, zset of task ids (score 0, read by lex range)
ORCH_INDEX = "oi:"  # oi:<owner>:<status>, likewise for orchestrations
# Recurring schedules (issue #12): ``sc:<id>`` the schedule's hash, ``si:<owner>:<status>`` the
# owner's index (as for tasks), ``sz`` the partition's schedules scored by when their next
# occurrences must be made, ``iS:<owner>:<schedule id>`` the tasks a schedule made (score 0, by
# id: an occurrence's id carries its due time, so id order is run order), ``sm`` the time of the
# last makers' round in the partition (a gap means every worker was down: catch-up applies).
SCHEDULE = "sc:"
SCHEDULE_INDEX = "si:"
SCHEDULES_DUE = "sz"
SCHEDULE_TASKS = "iS:"
SCHEDULE_MAKERS = "sm"
# A deleted schedule's occurrences (issue #19: an every-second schedule with a big payload kept
# growing Redis for the whole retention after its DELETE): ``sd`` and ``sdt`` hold
# ``<schedule id>:<owner>`` scored by when it was deleted. The retention janitor (lua/purge.lua)
# trims the schedule's ``iS:`` to its newest DELETED_SCHEDULE_KEEP occurrences at its next round
# (``sdt``), and deletes those DELETED_SCHEDULE_KEEP_S after the DELETE (``sd``), or at the
# retention if that is shorter; occurrences still running then are left to the retention.
SCHEDULES_DELETED = "sd"
SCHEDULES_DELETED_TRIM = "sdt"
DELETED_SCHEDULE_KEEP = 100
DELETED_SCHEDULE_KEEP_S = 3600.0
IDEMPOTENCY = "k:"  # k:<owner>:<kind>:<key> -> the id created under it
STATS = "s"  # hash "tasks:<status>" / "orchestrations:<status>" -> count
METRICS = "m"  # hash of attempt counters and the lateness histogram
# Per-owner lateness by minute, for the status page's chart (GET /v1/stats/lateness; issue #13):
# ``lm:<owner>:<minute>`` in each partition, a hash of lateness (ms, 2 significant digits) ->
# attempts, written by FINISH with two commands per attempt and gone LATENESS_TTL_S later; the
# route merges the partitions' hashes. 2 significant digits keep p50/p99/max within 5 % while a
# minute's hash stays small (a few dozen fields however many attempts).
LATENESS_BY_MINUTE = "lm:"
LATENESS_WINDOW_MIN = 60  # the longest window the route answers
LATENESS_TTL_S = (LATENESS_WINDOW_MIN + 5) * 60  # a little over the window: the oldest minute whole
FINISHED = "f"  # zset "t:<id>" / "o:<id>" scored by when it finished, for retention
# Hash with the time of the last reap by any worker ("last") and the end of the pause reapers take
# after an outage ("grace_until"): see lua/reap.lua.
REAPER = "r"
# -- issue #12: signed calls and callbacks (the calls helper) ---------------------------------
# An owner's signing secrets, a hash in the owner's partition (Layout.owner_partition): the
# current one and, for SIGNING_OVERLAP_S after a rotation, the previous one (see signing.py).
SIGNING_KEYS = "sk:"
# A task's callback deliveries (JSON per attempt), beside its attempts list ``t:<id>:a``.
CALLBACK_ATTEMPTS = ":cb"
# Named queues (issue #12), in the queue's partition (partitions.Layout.queue_partition), beside
# its tasks, so that one script sees a queue's tasks, settings and state (taskorch/queues.py):
QUEUE_CONF = "qc:"  # qc:<owner>:<queue> hash: the settings and state (lua/lib/queue.lua)
QUEUE_NAMES = "qn:"  # qn:<owner> set of the owner's named queues in this partition
QUEUE_WAITING = "qw:"  # qw:<owner>:<queue> zset of due jobs waiting their turn, by due ms
QUEUE_INDEX = "iq:"  # iq:<owner>:<queue>:<status>, as i: but for one named queue's tasks
QUEUE_READY = "qr"  # zset "<owner>:<queue>" -> ms when its first waiting task may be admitted
OWNER_KEY_PREFIX = KEY_PREFIX + "owner:"  # per-owner keys that are not per task (functions)
# While an old single-node layout is rewritten into partitions (taskorch migrate).
MIGRATE_LOCK_KEY = KEY_PREFIX + "migrating"
USER_KEY_PREFIX = KEY_PREFIX + "user:"
# Per user: the time (epoch seconds, a float) before which every token issued to them is revoked.
# `taskorch user passwd|remove` sets it; the API refuses a token whose iat is earlier.
USER_NOT_BEFORE_KEY_PREFIX = KEY_PREFIX + "user-nbf:"
# Per user name: sign-in attempts in the current window by client address (a hash address ->
# count that expires with the window). Not "signin:", the counter of one name before issue #19.
SIGNIN_ATTEMPTS_KEY_PREFIX = KEY_PREFIX + "signin-name:"
# Per client address: failed sign-ins in the current window, whatever the name (a counter).
SIGNIN_ADDRESS_KEY_PREFIX = KEY_PREFIX + "signin-addr:"
EVENTS_CHANNEL_PREFIX = KEY_PREFIX + "events:"  # pub/sub channel per owner, for /v1/events
WAKE_CHANNEL = KEY_PREFIX + "wake"  # published when work becomes due sooner than a worker's poll
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
# The shortest wait before any retry (of a task or a callback), whatever retry_delay,
# max_retry_delay or a target's Retry-After say: retry_delay 0 with 100 retries made 101 calls in
# 0.6 s (issue #19). A retry_delay below it is read as it, so that backoff still grows the waits
# (0 with backoff 2 waits 0.1, 0.2, 0.4 s ...). Accepted as given, shown as given.
MIN_RETRY_DELAY_S = 0.1
IDEMPOTENCY_TTL_S = 24 * 3600
RESPONSE_EXCERPT_BYTES = 4096  # attempts keep the first 4 KiB of the answer
RESPONSE_KEEP_BYTES = 64 * 1024  # what a call reads of an answer (a step reads 1 byte more)
MAX_BODY_BYTES = 1024 * 1024  # request bodies above this answer 413
# An orchestration of 10,000 steps is a few MB of JSON; its route alone accepts this much.
MAX_ORCHESTRATION_BODY_BYTES = 32 * 1024 * 1024
MAX_STEPS = 10_000
# Steps an orchestration runs in all unless it says (max_steps_run): a check's goto can loop.
DEFAULT_MAX_STEPS_RUN = 10_000
# POST /v1/tasks/batch: at most this many tasks per request, each within MAX_BODY_BYTES as a
# single create is, and the whole body within MAX_BATCH_BODY_BYTES (1,000 tasks of 16 KiB).
MAX_BATCH_TASKS = 1000
MAX_BATCH_BODY_BYTES = 16 * 1024 * 1024
MAX_FUNCTION_CODE_BYTES = 512 * 1024  # one source file
FUNCTION_KEY_PREFIX = KEY_PREFIX + "fn:"  # hash per function
FUNCTION_BUILDING_KEY = KEY_PREFIX + "fn-building"  # set of functions whose build must finish
# Queues: every task is in one; "default" (unlimited, its tasks spread over every partition)
# unless it names another. Names are short slugs (no ":", which the keys above use).
DEFAULT_QUEUE = "default"
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MIN_QUEUE_RATE = 0.001  # calls/s: one call every 16 minutes or so
MAX_QUEUE_RATE = 10_000.0  # calls/s: a slot every 0.1 ms, beyond what one partition dispatches
MAX_QUEUE_CONCURRENCY = 100_000
QUEUE_PUMP_QUEUES = 100  # queues one claim admits from per partition, at most
QUEUE_DIVERT_MAX = 1000  # due tasks one claim moves into their queues' lines, at most
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 50
DEFAULT_TOKEN_TTL_S = 3600
MIN_JWT_SECRET_BYTES = 32

# -- The API's edges: outages, hostile clients, tokens -----------------------------------------
# How long one request's Redis work may take in total, each call included, before the request
# answers 503 `unavailable` (TASKORCH_REDIS_TIMEOUT_S). A frozen Redis accepts connections but never answers; without a
# bound every request would hang with it. Local Redis answers in well under a millisecond.
DEFAULT_REDIS_TIMEOUT_S = 1.0
# A create carries the request's Redis deadline (wall clock, this much early) to its script, which
# writes nothing once Redis's clock has passed it: a create the API answered 503 because Redis
# did not answer in time does not take effect when a frozen Redis resumes.
CREATE_REPLY_MARGIN_MS = 200
# Past a request's Redis deadline it is cancelled again this often until it ends (see
# limits.RedisDeadline: redis-py's asyncio.wait_for can swallow one cancellation).
DEADLINE_RECANCEL_S = 0.05
# A loop that runs its timers later than this (CREATE_REPLY_MARGIN_MS / 2 as the bound) may have
# left a create's reply unread past the deadline: the 503 then says "unknown", not "not_stored".
# Measured by one repeating timer per API process, every LOOP_LAG_TICK_S, over the last window.
LOOP_LAG_TICK_S = 0.02
LOOP_LAG_WINDOW_S = 1.0
UNAVAILABLE_RETRY_AFTER_S = 1  # Retry-After on a 503: Redis usually comes back within seconds
# No token lives longer than this (TASKORCH_TOKEN_MAX_TTL_S): exp - iat above it is refused, so a
# leaked long-lived token cannot outlast a month, and revocation records need not live longer.
DEFAULT_TOKEN_MAX_TTL_S = 30 * 24 * 3600
# A token whose iat is later than now by more than this is refused ("not yet valid"): room for
# iat rounded up to the millisecond and for small clock differences between issuer and API.
IAT_LEEWAY_S = 1.0
# A user's revocation time is cached this long per API process: revocation takes effect within it.
NOT_BEFORE_CACHE_S = 1.0
# A verified token's signature and claims are remembered by its exact text this long per API
# process (never past its exp), at most this many tokens: verifying an HS256 token cost a create
# more than its Redis script did. Revocation is still checked on every request (above).
VERIFIED_TOKEN_CACHE_S = 60.0
VERIFIED_TOKEN_CACHE_SIZE = 10_000
# Sign-in throttling, per client address (as uvicorn reads it: X-Forwarded-For from an address
# in FORWARDED_ALLOW_IPS, else the peer; an IPv6 address by its /64). For one user name, at most
# SIGNIN_MAX_ATTEMPTS attempts per address per window; beyond it that address gets 429 with
# Retry-After until the window ends, whether or not the password is right, while the user signs
# in from any other address as before: strangers cannot lock a user out. Attempts are counted
# before the password is checked, so concurrent guesses cannot slip past; a success clears the
# address's count for that name. Whatever the names, at most SIGNIN_ADDRESS_MAX_FAILURES failed
# sign-ins per address per window (one guess each on many names is guessing too): this bounds
# what one address can guess, and with the scrypt cost what all of them can.
SIGNIN_MAX_ATTEMPTS = 5
SIGNIN_WINDOW_S = 300
SIGNIN_ADDRESS_MAX_FAILURES = 20
# scrypt (16 MiB, ~50 ms) runs on its own threads, this many at once, so a flood of sign-ins
# cannot take the threads the rest of the API uses. Waiting checks are taken from the addresses
# in turn, one each, so a sign-in waits for at most one check per other address waiting, never
# behind a flood; one address has at most SIGNIN_ADDRESS_CONCURRENCY sign-ins in progress (more
# answer 429 at once), and at most SIGNIN_MAX_WAITING checks wait in all (bounding memory).
SCRYPT_THREADS = 2
SIGNIN_ADDRESS_CONCURRENCY = 4
SIGNIN_MAX_WAITING = 1024
# Slow clients (TASKORCH_READ_TIMEOUT_S, default below): a request's line and headers must arrive
# within the timeout of its first byte (or of the connection opening); its body within the
# timeout plus one second per MIN_BODY_RATE_BPS bytes received. A client that drips a byte at a
# time is cut off with 408 instead of holding a connection for ever.
DEFAULT_READ_TIMEOUT_S = 10.0
MIN_BODY_RATE_BPS = 32 * 1024
# A request's line and headers are counted as their bytes arrive, before uvicorn's parser holds
# them (httptools keeps any number of headers of any size; h11 caps only the whole head): beyond
# MAX_REQUEST_LINE_BYTES the answer is 414, beyond any header limit 431, and the connection is
# closed. As large as nginx's defaults (8 KiB per line), so whatever a proxy passes on, we take:
# a JWT of a few KiB, cookies, tracing headers. A client gets its refusal before the close: the
# connection is half-closed and what else it sends is read and dropped for HEAD_REFUSED_LINGER_S.
MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_LINE_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024  # the request line and all headers together
HEAD_REFUSED_LINGER_S = 1.0
DEFAULT_KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn's default)
# Live event streams (GET /v1/events) one owner may hold open per API process; beyond it 429.
# Each holds a Redis pub/sub connection; a dashboard needs one per open tab.
MAX_EVENT_STREAMS_PER_OWNER = 10

# -- Signed calls and callbacks (issue #12) ------------------------------------------------------
# After a rotation the previous secret signs too (both signatures in webhook-signature) this
# long, so that targets can switch to the new one at their own pace.
SIGNING_OVERLAP_S = 24 * 3600
# Random bytes of a signing secret (Standard Webhooks asks for 24 to 64).
SIGNING_SECRET_BYTES = 32
# A worker reads an owner's secrets again when its copy is older than this. A rotation answers
# only after this long (plus SIGNING_ROTATE_MARGIN_S), so every call signed after the answer
# carries the new secret's signature: a target may switch to it at once.
SIGNING_CACHE_S = 1.0
# The margin also covers a call signed just before the answer whose worker was slow to send it.
SIGNING_ROTATE_MARGIN_S = 0.5
# A filter that no index narrows (GET /v1/tasks?name=, ?queue=default, ?schedule_id=&status=)
# reads the owner's newest records below the cursor, at most this many per request across every
# partition, and answers a short page (even an empty one) with a next_cursor where it ran out. A
# record read costs Redis about 3 to 7 us (a Lua GET and decode; more on a busy host), so such a
# request costs Redis 1 to 2 ms however many tasks the owner holds and however few match (issue
# #19: 1,000 reads per partition made a search over 16 partitions cost 98 ms, and 8 loops of it
# took Redis from everyone). Following next_cursor reads on, this many records a page.
LIST_SCAN_BUDGET = 256
# The budget is shared out over every partition, then what some left over (they had fewer
# records below the cursor) over those that had more, in at most this many rounds of scripts.
LIST_SCAN_ROUNDS = 3
# List and search requests (every paged GET and GET /v1/queues) one owner may have in progress at
# once in one API process; one more answers 429 with Retry-After (LIST_RETRY_AFTER_S). Each is
# bounded (LIST_SCAN_BUDGET, MAX_LIST_LIMIT), and this bounds how much of Redis one owner's reads
# can hold at a time, however many connections it loops on: 4 leaves room for the page, which
# loads a few lists at once.
MAX_LISTS_PER_OWNER = 4
LIST_RETRY_AFTER_S = 1

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
# The bound on how long a task whose worker died waits before another worker calls it again.
# Configurable with TASKORCH_LEASE_S. A claim lapses sooner than that, so that lapse + the
# reaper's round + the claim and start that follow fit inside it (worker.LeaseTimes does the
# sums).
DEFAULT_LEASE_S = 30.0
# Reapers look for lapsed claims at most this often (more often for short leases: a tenth).
REAP_INTERVAL_S = 1.0
# Room kept inside the lease for what follows a reap: the wake-up, claim and start of the retry,
# and a loaded event loop (at most this, or a tenth of a short lease).
LEASE_SLACK_S = 1.0
# A worker waits at most this long for one Redis reply (less for short leases) before it treats
# Redis as unreachable: a frozen Redis (SIGSTOP, a stalled host) otherwise hangs it for ever.
REDIS_SOCKET_TIMEOUT_S = 5.0
# A worker's leases are renewed from a thread of their own, so that a busy event loop cannot let
# them lapse; if the loop has not turned for this long it is wedged, and they are let lapse.
LOOP_STALL_S = 30.0
# A worker whose calls keep failing with "worker lost" (it died mid-call again and again) would
# never finish; after this many lost attempts the task fails instead of looping forever.
MAX_LOST_ATTEMPTS = 5
FINISH_BATCH = 500  # outcome writes per pipeline
# Finished tasks and orchestrations are kept this long, then deleted by the workers' janitor:
# Redis runs with noeviction, so unbounded history would end in refused writes. A week, like
# the history most schedulers keep; TASKORCH_RETENTION_S=0 keeps everything.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_MAX_IN_FLIGHT = 20_000  # calls one worker runs at once before it stops claiming

# -- Recurring schedules ------------------------------------------------------------------------
# Occurrences are made as real tasks this far ahead of their time, by a maker in every worker
# that looks every SCHEDULE_MAKE_EVERY_S: they are claimed and fired like any task (to the
# millisecond), a worker restart of several seconds leaves no gap, and a dead worker's part is
# done by any other. A schedule is looked at again when its next time is within half of this.
SCHEDULE_AHEAD_MS = 10_000
SCHEDULE_MAKE_EVERY_S = 1.0
# An occurrence more than this late when a maker looks (every worker was down) was missed, and
# the schedule's catch_up decides: "one" runs the latest missed one, "none" none, "all" every one
# (at most SCHEDULE_CATCH_UP_MAX, the latest). Anything less late just runs late.
SCHEDULE_LATE_MS = 5_000
# A downtime, once seen by a maker, holds this long: every worker back within it makes its first
# round with the same verdict and cut-off before it claims (lua/sched_due.lua).
SCHEDULE_DOWN_DECIDED_MS = 10_000
SCHEDULE_CATCH_UP_MAX = 100
SCHEDULE_MAKE_BATCH = 100  # occurrences per make script; a schedule behind is made in turns
SCHEDULE_DUE_BATCH = 100  # schedules per partition per makers' round
MIN_EVERY_S = 1.0  # the shortest interval: a task per second per schedule
MAX_EVERY_S = 10 * 366 * 24 * 3600.0
# Pause, change and delete cancel the occurrences made but not started, newest first, stopping at
# one that ended this long before now (occurrences fire in order: the rest ended too), or after
# SCHEDULE_CANCEL_SCAN of them.
SCHEDULE_CANCEL_SLACK_MS = 60_000
SCHEDULE_CANCEL_SCAN = 2_000
NEXT_RUNS = 5  # a schedule shows its next this many run times

# -- Bursts ------------------------------------------------------------------------------------
# A millisecond with k tasks due starts them (the compare-and-set to running) this much earlier
# per task, up to START_LEAD_MAX_MS: 10,000 due at one instant are started about half a second
# ahead, so that at the instant only the calls are left to make. From then on, as for
# START_LEAD_MS, a cancel or modify answers 409: the call is committed.
START_LEAD_PER_TASK_MS = 0.05
START_LEAD_MAX_MS = 500
START_BATCH = 500  # compare-and-sets per START round trip
# Calls leave in due order through a queue. One worker makes at most WORKER_CALLS at once and at
# most HOST_CALLS to one host (scheme, host, port): a burst to one host then reuses that many
# keep-alive connections instead of opening one per call, and its first calls go out at once
# instead of after ten thousand others have been set up. When calls wait for room and the host
# holding it (or, for the worker's room, every host) has not answered anything for
# CALL_STALL_S at two looks in a row, its calls in flight stop counting and the next ones go: a
# slow or hung host never holds up another host's calls, and its own later calls wait about
# 2 x CALL_STALL_S per HOST_CALLS calls ahead of them. A host that answers, however busy the
# worker, keeps its room.
WORKER_CALLS = 256
LAUNCH_BATCH = 32  # calls set up per loop iteration, so that the first ones are sent at once
HOST_CALLS = 100
# How long a worker tries to open a connection ahead of the calls due at a host (outbound.warm)
# before it leaves the connecting to the calls themselves.
WARM_TIMEOUT_S = 5.0
# Calls due sooner than this after their claim connect themselves: opening connections for them
# as well would race them and open up to twice as many (bench_burst with two workers).
WARM_AHEAD_MIN_MS = 150
CALL_STALL_S = 0.1
# A worker holds no more claims than it can call within CLAIM_BACKLOG_S at the rate it has
# shown while busy (assumed WORKER_RATE_FLOOR calls/s until it has shown more): what it could
# not call on time stays in the queue for the workers that have room. Claims made during a
# burst cost the calls under way a round trip each, so the bound is generous: 12,000 at first.
CLAIM_BACKLOG_S = 3.0
WORKER_RATE_FLOOR = 4000
# Jobs one claim takes when more are due: a burst is claimed in slices, and the first worker to
# see it wakes the others (WAKE_CHANNEL), so that their slices interleave and it spreads.
CLAIM_SLICE = 250
# A worker names at most this many of its claims whose replies it lost in its next claim (one
# is lost per socket timeout of an outage: this covers minutes of it, longer than a claim's record
# and lease last).
LOST_CLAIMS_MAX = 64

# -- the Python client (taskorch.client) and the `taskorch tasks|schedules|queues` verbs --------
# A list page as the client's iterators fetch it: the API's largest, as few round trips as it
# allows (MAX_LIST_LIMIT).
CLIENT_PAGE_SIZE = MAX_LIST_LIMIT
# Further sends of a request answered 503/429 or never answered, where sending again is safe:
# enough to ride out a Redis restart (a few seconds at Retry-After: 1), few enough that a script
# hears of a real outage within half a minute.
CLIENT_RETRIES = 3
# The longest Retry-After the client waits out; longer (a sign-in throttled for minutes) raises
# at once, since waiting would only hide it.
CLIENT_MAX_RETRY_WAIT_S = 30.0
# The wait before a repeat when the answer names none (a connection refused): doubled each time.
CLIENT_FIRST_BACKOFF_S = 0.5
# Per request: above a rotate's SIGNING_CACHE_S wait and a function upload's build start.
CLIENT_TIMEOUT_S = 30.0

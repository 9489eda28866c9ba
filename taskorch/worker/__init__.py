"""The worker: claims due jobs a little early, fires each from a precise timer, records outcomes.

Why not arq's ``Worker``: it polls every 0.5 s (far from millisecond firing), it keeps a crashed
worker's job behind an "in-progress" key for ``job_timeout + 10`` s (15 minutes for a 900 s
target), its abort is a best-effort poll, a finished job's id cannot be enqueued again while its
result is kept, and it stops when Redis restarts. We keep the shape of arq's queue (a sorted set of job
ids scored by due ms, a definition per job; ours are JSON under our prefix, so arq's tools do not
read them) and replace the consumer:

* **Claim ahead.** Every ``poll_s`` (or at once, when a publisher says something is due soon) a
  worker moves the jobs due within ``claim_ahead_ms`` from the queue to a leases set it owns, in
  one script. Each job then waits on an in-process timer, so it fires within a millisecond of its
  due time however the poll is tuned. A burst is claimed in slices (``CLAIM_SLICE``), and the
  first worker to see more than a slice wakes the others, so that several workers share it; no
  worker holds more than it can call within ``CLAIM_BACKLOG_S`` at the rate it has shown.
* **Compare-and-set before calling.** When timers fire, one script moves every due task to
  ``running`` only if it still has the job id that was claimed. A cancel or modify removes or
  replaces that id, so an old version can never fire; whichever script runs first wins. A
  crowded millisecond is started earlier (``START_LEAD_PER_TASK_MS``, at most
  ``START_LEAD_MAX_MS``), its round trips all sent at once, so that at its due time only calls
  are left.
* **Calls leave through a queue, in due order** (:meth:`Worker._pump`): at most
  ``WORKER_CALLS`` at once and ``HOST_CALLS`` per host, set up ``LAUNCH_BATCH`` per loop
  iteration. A burst to one host reuses that many keep-alive connections instead of opening one
  per call (10,000 at once before), and its first calls go out before the rest are set up. A
  host that has not answered for ``CALL_STALL_S`` while calls wait loses its room to them, so a
  slow or hung host never holds up another host's calls.
* **Connections open before the due time.** Right after a claim, the worker opens as many
  keep-alive connections to each host as calls are due there in one millisecond (at most
  ``HOST_CALLS``, less what the host has in flight), so that at the due time the calls skip
  the TCP and TLS handshakes (:func:`~taskorch.worker.outbound.warm`): a burst's first call arrived
  35 to 100 ms after its due time on new connections, 10 to 20 ms on warm ones (bench_burst).
* **Leases instead of in-progress keys.** A claim lapses unless the worker renews it. Any
  worker's reaper hands a lapsed job back: unstarted ones to the queue, running ones as a
  "worker lost" attempt and an immediate retry. The sums
  (:class:`~taskorch.worker.leases.LeaseTimes`) make a dead worker's task go out again within
  ``lease_s``: the claim lapses ``lease_s`` minus one reaper round minus some slack after it was
  last renewed, and reapers look every round. Leases are renewed from a thread of their own
  (:class:`~taskorch.worker.leases.LeaseKeeper`): a worker whose event loop runs seconds behind
  under a burst of calls is busy, not dead, and keeps them. Lease times are Redis's clock
  (``TIME`` in the scripts), so a script that runs late cannot set a lease that has already
  lapsed.
* **Queues decide inside the claim.** A named queue's rate, concurrency cap and pause are held
  by the claim, start and outcome scripts in the queue's partition, so they bind every worker
  together: a task claimed under them is claimed for its dispatch slot and fires then
  (:mod:`taskorch.queues`); its attempt's lateness counts from its own due time.
* **Unique job ids.** A job id is ``<task id>.<generation>``; every reschedule takes a new
  generation, so no id is ever reused.

Redis outages (killed, restarting, frozen) are waited out, and work done meanwhile is kept:

* **Nothing is given up while the worker lives.** A start and an outcome are retried until Redis
  answers, however long it is away; the claims stay held (and renewed once Redis is back). Each
  retried step is a script that is safe to repeat: ``START`` answers the same attempt number to
  the same worker for the same job (its first reply may have been lost with the connection:
  the task is then already ``running``, and without that the worker would skip it and a reaper
  would later invent a "worker lost" attempt for a call that was never made), and ``FINISH``
  records an outcome once. The worker that starts a job takes its lease, wherever a reaper put
  it meanwhile, so exactly one worker calls it.
* **An outage is not a death.** While Redis is away nobody can renew, so every lease may have
  lapsed when it is back. Reapers notice that nobody reaped for a while and hold back for a
  grace period in which every live worker renews what it holds (see ``lua/reap.lua``): a call that
  completed during the outage is then recorded by its worker, not repeated. Should a reaper
  still take a live worker's attempt for lost (a worker stalled past its lease), the worker's
  outcome wins as long as the retry has not started (``lua/finish.lua``).
* **Whatever is given up is handed back**: claims not started on shutdown or after a crash of
  ours are released to the queue, or, when Redis cannot be reached, simply no longer renewed, so
  their leases lapse and a reaper hands them back.
* **A claim is safe to lose.** A claim whose reply is given up (a frozen Redis runs it when it
  resumes) is named in the next claim, which adopts the jobs it took (``lua/claim.lua``): they
  fire when Redis is back instead of waiting a lease in this worker's leases.
* **A frozen Redis is noticed**: every command has a socket timeout
  (:attr:`~taskorch.worker.leases.LeaseTimes.socket_timeout_s`), so a SIGSTOPped Redis reads
  as an outage, not a hang.

Recurring schedules need no timer of their own: every worker runs a maker
(:mod:`taskorch.schedules`) that, about once a second, turns the schedules whose next times are
near into ordinary tasks ``SCHEDULE_AHEAD_MS`` ahead, one compare-and-set per schedule, so the
claim-ahead machinery above fires them like any task. Its first round runs before the first
claim: after every worker was down, ``catch_up`` decides about overdue occurrences before they
can fire.

What still repeats (at-least-once): a call whose worker died, or could not reach Redis while
other workers could, for longer than the lease before its outcome was recorded. The repeat is a
new attempt with the same ``Idempotency-Key``.
"""

from taskorch.worker.core import Worker
from taskorch.worker.housekeeping import cancel_all
from taskorch.worker.outcomes import LATENESS_BUCKETS_MS, lateness_bucket, lateness_field
from taskorch.worker.process import run_worker
from taskorch.worker.state import JobHandler

__all__ = [
    "LATENESS_BUCKETS_MS",
    "JobHandler",
    "Worker",
    "cancel_all",
    "lateness_bucket",
    "lateness_field",
    "run_worker",
]

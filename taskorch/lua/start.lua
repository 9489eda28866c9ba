-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: now, worker_id, lease_ms, then pairs task_id, job. Returns per pair the attempt number,
-- or 0 when the task was cancelled or modified since it was claimed (the compare-and-set that
-- keeps old versions from ever firing). Idempotent per job and worker: a start repeated by the
-- worker that made it (its reply was lost: Redis crashed or froze) answers the same number again,
-- so the worker calls once instead of leaving the task running with no call. The starting worker
-- also takes the job's lease, wherever a reaper put it while this worker was out of reach: the
-- one that starts a job is the one whose outcome counts.
--- @include "prelude"
--- @include "lease_clock"

local now, worker, lease = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
batching()
for i = 4, #ARGV, 2 do
  local id, job = ARGV[i], ARGV[i + 1]
  local t = load(id)
  if t and t.qa and (t.s == 'scheduled' or t.s == 'retrying') and job_of(id, t) == job
    and queue_conf(t.o, t.q).paused then
    -- queues: paused since it was admitted; back in its line, in due order, not called
    redis.call('ZREM', LEASES, job)
    redis.call('HDEL', LEASE_OWNER, job)
    redis.call('ZADD', qwait(t.o, t.q), t.r, job)
    queue_release(t, now)
    save(id, t)
    out[#out + 1] = 0
  elseif t and (t.s == 'scheduled' or t.s == 'retrying') and job_of(id, t) == job then
    local old = t.s
    t.a = t.a + 1
    t.s = 'running'; t.st = now; t.sf = t.r; t.u = now; t.sb = worker; t.lj = ''; t.rj = ''
    save(id, t)
    redis.call('ZREM', QUEUE, job)
    redis.call('ZADD', LEASES, math.max(t.r, clock()) + lease, job)
    redis.call('HSET', LEASE_OWNER, job, worker)
    move_task(t.o, id, old, 'running', t.q)
    publish(t.o, 'task', id, 'running')
    out[#out + 1] = t.a
  elseif t and t.s == 'running' and job_of(id, t) == job and t.sb == worker then
    out[#out + 1] = t.a
  else
    if not t or job_of(id, t) ~= job then drop_job(job) end
    out[#out + 1] = 0
  end
end
flush()
return out

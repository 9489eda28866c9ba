"""The Lua scripts that make every state change of a task atomic in Redis.

Each script is the prelude below plus its own body. A status change, its index update, the
enqueueing of the next arq job and the event for the live view happen in one script, so a crash
can never leave a task half-changed: that is what "nothing lost" rests on.
"""

from __future__ import annotations

from taskorch import constants as c

PRELUDE = f"""
local P = '{c.KEY_PREFIX}'
local QUEUE = '{c.QUEUE_KEY}'
local LEASES = '{c.LEASES_KEY}'
local LEASE_OWNER = '{c.LEASE_OWNER_KEY}'
local function idx(owner, kind) return P .. 'owner:' .. owner .. ':' .. kind end
local function move_status(owner, kind, id, old, new)
  if old == new then return end
  if old then redis.call('ZREM', idx(owner, kind .. ':' .. old), id) end
  redis.call('ZADD', idx(owner, kind .. ':' .. new), 0, id)
  if old then redis.call('HINCRBY', P .. 'stats', kind .. ':' .. old, -1) end
  redis.call('HINCRBY', P .. 'stats', kind .. ':' .. new, 1)
end
-- arq's job layout: the definition at job:<id>, the id in the queue scored by due time in ms.
local function enqueue(job, fn, arg, due, now, try)
  local data = cjson.encode({{t = try, f = fn, a = {{arg}}, k = {{}}, et = now}})
  local ttl = math.max(due - now, 0) + 86400000
  redis.call('SET', '{c.JOB_KEY_PREFIX}' .. job, data, 'PX', math.floor(ttl))
  redis.call('ZADD', QUEUE, due, job)
end
local function drop_job(job)
  if job and job ~= '' then
    redis.call('ZREM', QUEUE, job)
    redis.call('DEL', '{c.JOB_KEY_PREFIX}' .. job)
    redis.call('ZREM', LEASES, job)
    redis.call('HDEL', LEASE_OWNER, job)
  end
end
local function publish(owner, kind, id, status)
  redis.call('PUBLISH', '{c.EVENTS_CHANNEL_PREFIX}' .. owner,
    cjson.encode({{type = kind, id = id, status = status}}))
end
-- An Idempotency-Key: the id already created under it, or nil after claiming it for ``id``.
-- The key lives only as long as the record it names: once retention has deleted that record
-- (``record`` is its key prefix), a repeat claims the key afresh and creates anew.
local function idempotent(key, id, ttl, record)
  if key == '' then return nil end
  local existing = redis.call('GET', key)
  if existing and redis.call('EXISTS', record .. existing) == 1 then return existing end
  redis.call('SET', key, id, 'EX', ttl)
  return nil
end
-- What the API answers for a task, read in the script that wrote it: a create, cancel or modify
-- that Redis applied is never answered with a 503 from a second round trip.
local function task_view(id)
  local key = P .. 'task:' .. id
  return {{redis.call('HGETALL', key), redis.call('LRANGE', key .. ':attempts', 0, -1)}}
end
-- Finished records, scored by when they finished, for the retention janitor (PURGE).
local function finished(kind, id, now)
  redis.call('ZADD', P .. 'finished', now, kind .. ':' .. id)
end
local function wake(due, now, ahead)
  if due - now <= ahead then redis.call('PUBLISH', '{c.WAKE_CHANNEL}', due) end
end
local function new_task(id, owner, spec, name, due, now, orc, ahead)
  local job = id .. '.1'
  redis.call('HSET', P .. 'task:' .. id, 'id', id, 'owner', owner, 'status', 'scheduled',
    'spec', spec, 'name', name, 'run_at', due, 'created_at', now, 'updated_at', now,
    'gen', 1, 'job', job, 'attempt', 0, 'lost', 0, 'orchestration_id', orc)
  redis.call('ZADD', idx(owner, 'tasks'), 0, id)
  move_status(owner, 'tasks', id, nil, 'scheduled')
  enqueue(job, 'fire_task', id, due, now, 1)
  publish(owner, 'task', id, 'scheduled')
  wake(due, now, ahead)
end
local function cancel_task(id, now)
  local key = P .. 'task:' .. id
  local t = redis.call('HMGET', key, 'status', 'owner', 'job')
  if t[1] ~= 'scheduled' and t[1] ~= 'retrying' then return t[1] end
  drop_job(t[3])
  redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'updated_at', now, 'job', '')
  finished('t', id, now)
  move_status(t[2], 'tasks', id, t[1], 'cancelled')
  publish(t[2], 'task', id, 'cancelled')
  return 'cancelled'
end
"""

# A create's deadline (Unix ms, '' for none): past it by Redis's clock the create writes nothing
# and returns {-1}, because the API has answered 503 by then (a frozen Redis that resumes runs
# what it had received). TIME before any write is allowed: scripts replicate their effects.
PAST_DEADLINE = """
local function past_deadline(deadline)
  if not deadline or deadline == '' then return false end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline)
end
"""

# ARGV: id, owner, spec, name, due, now, idem_key|'', idem_ttl_s, orchestration_id|'', wake_ms,
#       deadline_ms|''.
# Returns {created (1/0), task hash as a flat list, attempts}, or {-1} past the deadline.
CREATE_TASK = (
    PAST_DEADLINE
    + """
if past_deadline(ARGV[11]) then return {-1} end
local id, owner, due, now = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local existing = idempotent(ARGV[7], id, ARGV[8], P .. 'task:')
if existing then
  local view = task_view(existing)
  return {0, view[1], view[2]}
end
new_task(id, owner, ARGV[3], ARGV[4], due, now, ARGV[9], tonumber(ARGV[10]))
local view = task_view(id)
return {1, view[1], view[2]}
"""
)

# ARGV: id, owner, now.
# Returns {'ok', hash, attempts} | {'not_found'} | {'conflict', status} | {'in_orchestration', id}
CANCEL_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = P .. 'task:' .. id
local t = redis.call('HMGET', key, 'status', 'owner', 'job', 'orchestration_id')
if not t[2] or t[2] ~= owner then return {'not_found'} end
if t[4] and t[4] ~= '' then return {'in_orchestration', t[4]} end
if t[1] ~= 'scheduled' and t[1] ~= 'retrying' then return {'conflict', t[1]} end
cancel_task(id, now)
local view = task_view(id)
return {'ok', view[1], view[2]}
"""

# ARGV: id, owner, now, expected_gen, spec, name, due, wake_ms. Returns {'ok', hash, attempts}
# | {'not_found'} | {'conflict', status} | {'in_orchestration', id} | {'stale'} (re-read, retry)
MODIFY_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = P .. 'task:' .. id
local t = redis.call('HMGET', key, 'status', 'owner', 'job', 'gen', 'orchestration_id')
if not t[2] or t[2] ~= owner then return {'not_found'} end
if t[5] and t[5] ~= '' then return {'in_orchestration', t[5]} end
if t[1] ~= 'scheduled' and t[1] ~= 'retrying' then return {'conflict', t[1]} end
if t[4] ~= ARGV[4] then return {'stale'} end
drop_job(t[3])
local gen = tonumber(t[4]) + 1
local job = id .. '.' .. gen
local due = tonumber(ARGV[7])
redis.call('HSET', key, 'spec', ARGV[5], 'name', ARGV[6], 'run_at', due, 'gen', gen,
  'job', job, 'updated_at', now)
enqueue(job, 'fire_task', id, due, now, gen)
publish(owner, 'task', id, t[1])
wake(due, now, tonumber(ARGV[8]))
local view = task_view(id)
return {'ok', view[1], view[2]}
"""

# ARGV: horizon_ms, now_ms, lease_ms, worker_id, limit.
# Moves due jobs from the queue to the leases set, owned by this worker, and returns for each
# {job, due, data, spec} (spec: the task's spec for fire_task jobs, '' otherwise).
CLAIM = """
local horizon, now, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local items = redis.call('ZRANGEBYSCORE', QUEUE, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, ARGV[5])
local out = {}
for i = 1, #items, 2 do
  local job, due = items[i], tonumber(items[i + 1])
  redis.call('ZREM', QUEUE, job)
  local data = redis.call('GET', P .. 'job:' .. job)
  if data then
    local d = cjson.decode(data)
    local extra = ''
    local keep = true
    if d.f == 'fire_task' then
      local t = redis.call('HMGET', P .. 'task:' .. d.a[1], 'job', 'spec')
      if t[1] ~= job then keep = false else extra = t[2] end
    end
    if keep then
      redis.call('ZADD', LEASES, math.max(due, now) + lease, job)
      redis.call('HSET', LEASE_OWNER, job, ARGV[4])
      out[#out + 1] = {job, tostring(due), data, extra}
    else
      redis.call('DEL', P .. 'job:' .. job)
    end
  end
end
return out
"""

# ARGV: now, worker_id, lease_ms, then pairs task_id, job. Returns per pair the attempt number,
# or 0 when the task was cancelled or modified since it was claimed (the compare-and-set that
# keeps old versions from ever firing). Idempotent per job and worker: a START repeated by the
# worker that made it (its reply was lost: Redis crashed or froze) answers the same number again,
# so the worker calls once instead of leaving the task running with no call. The starting worker
# also takes the job's lease, wherever a reaper put it while this worker was out of reach: the
# one that starts a job is the one whose outcome counts.
START = """
local now, worker, lease = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local id, job = ARGV[i], ARGV[i + 1]
  local key = P .. 'task:' .. id
  local t = redis.call('HMGET', key, 'status', 'job', 'owner', 'attempt', 'run_at', 'started_by')
  if (t[1] == 'scheduled' or t[1] == 'retrying') and t[2] == job then
    local n = tonumber(t[4]) + 1
    redis.call('HSET', key, 'status', 'running', 'attempt', n, 'started_at', now,
      'scheduled_for', t[5], 'updated_at', now, 'started_by', worker, 'lost_job', '',
      'retry_job', '')
    redis.call('ZREM', QUEUE, job)
    redis.call('ZADD', LEASES, math.max(tonumber(t[5]), now) + lease, job)
    redis.call('HSET', LEASE_OWNER, job, worker)
    move_status(t[3], 'tasks', id, t[1], 'running')
    publish(t[3], 'task', id, 'running')
    out[#out + 1] = n
  elseif t[1] == 'running' and t[2] == job and t[6] == worker then
    out[#out + 1] = tonumber(t[4])
  else
    if t[2] ~= job then drop_job(job) end
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: id, job, outcome (succeeded|failed|retry), attempt_json, next_due, now, wake_ms,
#       metric fields... Returns 1 when recorded, 0 when the attempt no longer owned the task
#       (its lease lapsed and another worker recovered it).
FINISH = """
local id, job, outcome = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[6])
local key = P .. 'task:' .. id
local t = redis.call('HMGET', key, 'status', 'job', 'owner', 'gen', 'orchestration_id',
  'lost_job', 'retry_job', 'lost')
for i = 8, #ARGV do
  local f, by = string.match(ARGV[i], '^(.+)=(.+)$')  -- "name=x" adds x, a bare name adds 1
  if f then redis.call('HINCRBYFLOAT', P .. 'metrics', f, by)
  else redis.call('HINCRBY', P .. 'metrics', ARGV[i], 1) end
end
if t[2] ~= job then
  -- A reaper took this attempt for lost although its worker was alive and held the outcome; the
  -- retry it enqueued has not started yet (START clears lost_job), so the real outcome wins:
  -- take back the "worker lost" record and the retry, and record what the call got.
  if t[1] ~= 'retrying' or t[6] ~= job or t[2] ~= t[7] then return 0 end
  redis.call('RPOP', key .. ':attempts')
  drop_job(t[2])
  redis.call('HINCRBY', P .. 'metrics', 'attempts_total:lost', -1)
  redis.call('HSET', key, 'lost', tonumber(t[8]) - 1, 'lost_job', '', 'retry_job', '')
  move_status(t[3], 'tasks', id, 'retrying', 'running')
  t[1] = 'running'
end
if t[1] ~= 'running' then return 0 end
redis.call('RPUSH', key .. ':attempts', ARGV[4])
drop_job(job)
local status = outcome
if outcome == 'retry' then
  status = 'retrying'
  local gen = tonumber(t[4]) + 1
  local nj = id .. '.' .. gen
  local due = tonumber(ARGV[5])
  redis.call('HSET', key, 'status', status, 'gen', gen, 'job', nj, 'run_at', due,
    'updated_at', now)
  enqueue(nj, 'fire_task', id, due, now, gen)
  wake(due, now, tonumber(ARGV[7]))
else
  redis.call('HSET', key, 'status', status, 'finished_at', now, 'updated_at', now, 'job', '')
  finished('t', id, now)
  if t[5] and t[5] ~= '' then
    -- an orchestration's step ended: hand it to the step machine through its own job
    local oj = t[5] .. '.' .. id .. '.' .. status
    enqueue(oj, 'orc', 'done|' .. t[5] .. '|' .. id .. '|' .. status, now, now, 1)
    wake(now, now, tonumber(ARGV[7]))
  end
end
move_status(t[3], 'tasks', id, 'running', status)
publish(t[3], 'task', id, status)
return 1
"""

# ARGV: now, limit, max_lost, gap_ms, grace_ms. Recovers jobs whose claim lapsed: a worker died
# holding them. A claimed job that never started goes back to the queue; a task that was running
# gets a "worker lost" attempt and is retried at once. Returns the number of jobs recovered, or
# -1 while it holds back after an outage.
#
# An outage is not a death: while Redis was out of reach (killed, frozen, cut off) no worker
# could renew its leases, so every lease may have lapsed by the time Redis is back, yet the
# workers holding them are alive, some with a call's outcome in hand. Reapers run every second
# or so; when the last reap is more than gap_ms old, nobody could reach Redis (or no worker ran),
# and no reaper recovers anything for grace_ms: long enough for every live worker to renew what
# it still holds. What has lapsed after that belonged to a dead worker, or was handed back.
REAP = (
    """
local now, max_lost = tonumber(ARGV[1]), tonumber(ARGV[3])
local gap, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local r = redis.call('HMGET', '"""
    + c.REAPER_KEY
    + """', 'last', 'grace_until')
local last, grace_until = tonumber(r[1]), tonumber(r[2] or '0')
if last and now - last > gap and now + grace > grace_until then
  grace_until = now + grace
  redis.call('HSET', '"""
    + c.REAPER_KEY
    + """', 'grace_until', grace_until)
end
if not last or now > last then redis.call('HSET', '"""
    + c.REAPER_KEY
    + """', 'last', now) end
if now < grace_until then return -1 end
local items = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, ARGV[2])
local n = 0
for _, job in ipairs(items) do
  redis.call('ZREM', LEASES, job)
  redis.call('HDEL', LEASE_OWNER, job)
  local data = redis.call('GET', P .. 'job:' .. job)
  if data then
    n = n + 1
    local d = cjson.decode(data)
    if d.f ~= 'fire_task' then
      redis.call('ZADD', QUEUE, now, job)
    else
      local id = d.a[1]
      local key = P .. 'task:' .. id
      local t = redis.call('HMGET', key, 'status', 'job', 'owner', 'gen', 'attempt',
        'started_at', 'scheduled_for', 'lost', 'orchestration_id')
      if t[2] ~= job then
        redis.call('DEL', P .. 'job:' .. job)
      elseif t[1] == 'scheduled' or t[1] == 'retrying' then
        redis.call('ZADD', QUEUE, now, job)
      elseif t[1] == 'running' then
        local lost = tonumber(t[8] or '0') + 1
        local sf, st = tonumber(t[7]), tonumber(t[6])
        redis.call('RPUSH', key .. ':attempts', cjson.encode({n = tonumber(t[5]), sf = sf,
          st = st, ft = now, lat = st - sf, err = 'worker lost: no outcome within the lease, retrying'}))
        redis.call('HINCRBY', P .. 'metrics', 'attempts_total:lost', 1)
        redis.call('DEL', P .. 'job:' .. job)
        if lost > max_lost then
          redis.call('HSET', key, 'status', 'failed', 'finished_at', now, 'updated_at', now,
            'job', '', 'lost', lost)
          finished('t', id, now)
          move_status(t[3], 'tasks', id, 'running', 'failed')
          publish(t[3], 'task', id, 'failed')
          if t[9] and t[9] ~= '' then
            enqueue(t[9] .. '.' .. id .. '.failed', 'orc', 'done|' .. t[9] .. '|' .. id .. '|failed',
              now, now, 1)
          end
        else
          local gen = tonumber(t[4]) + 1
          local nj = id .. '.' .. gen
          redis.call('HSET', key, 'status', 'retrying', 'gen', gen, 'job', nj, 'run_at', now,
            'updated_at', now, 'lost', lost, 'lost_job', job, 'retry_job', nj)
          enqueue(nj, 'fire_task', id, now, now, gen)
          move_status(t[3], 'tasks', id, 'running', 'retrying')
          publish(t[3], 'task', id, 'retrying')
        end
      end
    end
  end
end
if n > 0 then redis.call('PUBLISH', '"""
    + c.WAKE_CHANNEL
    + """', now) end
return n
"""
)

# ARGV: worker_id, then pairs job, due. Hands claimed-but-unstarted jobs back to the queue: on
# shutdown, and when the worker gives up on them. Only the lease's owner can hand a job back.
RELEASE = (
    """
local n = 0
for i = 2, #ARGV, 2 do
  local job = ARGV[i]
  if redis.call('HGET', LEASE_OWNER, job) == ARGV[1] then
    redis.call('ZREM', LEASES, job)
    redis.call('HDEL', LEASE_OWNER, job)
    if redis.call('EXISTS', P .. 'job:' .. job) == 1 then
      redis.call('ZADD', QUEUE, ARGV[i + 1], job)
      n = n + 1
    end
  end
end
if n > 0 then redis.call('PUBLISH', '"""
    + c.WAKE_CHANNEL
    + """', ARGV[1]) end
return n
"""
)

# ARGV: job, worker_id, outcome. Ends a non-task job (an orchestration event) that ran.
DONE = """
if redis.call('HGET', LEASE_OWNER, ARGV[1]) ~= ARGV[2] then return 0 end
drop_job(ARGV[1])
return 1
"""


# -- orchestrations ------------------------------------------------------------------------------
# An orchestration is a hash (orc:<id>) plus per-step hashes keyed by step index: :specs (the step's
# task spec), :conds (a step's own condition), :state (t<i> task id, s<i> final step status,
# c<i> check status) and a list :check:<i> of check attempts. Advancing reads and writes only the
# fields of one index, so step 9,999 costs what step 1 does. Each transition is one script that
# checks the orchestration is where the event expects it (so a replayed event after a crash is a
# no-op) and creates the next step's task or job in the same breath.
ORC_PRELUDE = """
local function okey(id) return P .. 'orc:' .. id end
local function finish_orc(id, owner, old, status, now)
  redis.call('HSET', okey(id), 'status', status, 'finished_at', now, 'updated_at', now,
    'phase', 'done', 'job', '')
  finished('o', id, now)
  move_status(owner, 'orchestrations', id, old, status)
  publish(owner, 'orchestration', id, status)
end
local function start_step(id, owner, i, task_id, now, ahead)
  local spec = redis.call('HGET', okey(id) .. ':specs', i)
  new_task(task_id, owner, spec, 'step ' .. i, now, now, id, ahead)
  redis.call('HSET', okey(id) .. ':state', 't' .. i, task_id)
  redis.call('HSET', okey(id), 'current_step', i, 'phase', 'step', 'updated_at', now, 'job', '')
  publish(owner, 'orchestration', id, 'running')
end
local function run_fallback(id, owner, fallback, fid, now, ahead)
  if fallback and fallback ~= '' then
    new_task(fid, owner, fallback, 'fallback', now, now, id, ahead)
    redis.call('HSET', okey(id), 'fallback_task', fid, 'fallback_status', 'scheduled')
  end
end
-- What the API needs to answer for an orchestration, read in the script that wrote it: its hash,
-- its :state and which steps have a condition of their own.
local function orc_view(id)
  return {redis.call('HGETALL', okey(id)), redis.call('HGETALL', okey(id) .. ':state'),
    redis.call('HKEYS', okey(id) .. ':conds')}
end
local function condition_for(id, i, shared)
  local own = redis.call('HGET', okey(id) .. ':conds', i)
  if own then return own end
  if shared and shared ~= '' then return shared end
  return nil
end
local function schedule_check(id, i, n, due, now, ahead)
  local job = id .. '.c' .. i .. '.' .. n
  enqueue(job, 'orc', 'check|' .. id .. '|' .. i .. '|' .. n, due, now, n)
  redis.call('HSET', okey(id), 'job', job)
  redis.call('HSET', okey(id) .. ':state', 'c' .. i, 'waiting')
  wake(due, now, ahead)
end
"""

# ARGV: id, owner, name, due, now, condition|'', fallback|'', idem_key|'', idem_ttl, wake_ms, n,
#       then n step specs, then n step conditions ('' where the step has none), then
#       deadline_ms|'' (see PAST_DEADLINE).
# Returns {created (1/0), hash, state, own-condition step indexes} (see orc_view), or {-1}.
ORC_CREATE = (
    PAST_DEADLINE
    + """
if past_deadline(ARGV[12 + 2 * tonumber(ARGV[11])]) then return {-1} end
local id, owner, due, now = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
local existing = idempotent(ARGV[8], id, ARGV[9], P .. 'orc:')
if existing then
  local view = orc_view(existing)
  return {0, view[1], view[2], view[3]}
end
local n = tonumber(ARGV[11])
local key = okey(id)
redis.call('HSET', key, 'id', id, 'owner', owner, 'status', 'scheduled', 'name', ARGV[3],
  'run_at', due, 'created_at', now, 'updated_at', now, 'current_step', 0, 'n', n,
  'condition', ARGV[6], 'fallback', ARGV[7], 'phase', 'pending', 'gen', 1, 'check_n', 0,
  'fallback_task', '', 'fallback_status', '', 'job', id .. '.s1')
for i = 1, n do
  redis.call('HSET', key .. ':specs', i - 1, ARGV[11 + i])
  if ARGV[11 + n + i] ~= '' then redis.call('HSET', key .. ':conds', i - 1, ARGV[11 + n + i]) end
end
redis.call('ZADD', idx(owner, 'orchestrations'), 0, id)
move_status(owner, 'orchestrations', id, nil, 'scheduled')
enqueue(id .. '.s1', 'orc', 'start|' .. id .. '|1', due, now, 1)
publish(owner, 'orchestration', id, 'scheduled')
wake(due, now, tonumber(ARGV[10]))
local view = orc_view(id)
return {1, view[1], view[2], view[3]}
"""
)

# ARGV: id, owner, now, expected_gen, name, due, condition, fallback, n (-1: steps unchanged),
#       wake_ms, then n specs and n conditions. Returns as MODIFY_TASK does, with orc_view's
#       three parts after 'ok'.
ORC_MODIFY = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'owner', 'gen', 'job')
if not o[2] or o[2] ~= owner then return {'not_found'} end
if o[1] ~= 'scheduled' then return {'conflict', o[1]} end
if o[3] ~= ARGV[4] then return {'stale'} end
drop_job(o[4])
local gen = tonumber(o[3]) + 1
local due = tonumber(ARGV[6])
local n = tonumber(ARGV[9])
if n >= 0 then
  redis.call('DEL', key .. ':specs', key .. ':conds')
  for i = 1, n do
    redis.call('HSET', key .. ':specs', i - 1, ARGV[10 + i])
    if ARGV[10 + n + i] ~= '' then redis.call('HSET', key .. ':conds', i - 1, ARGV[10 + n + i]) end
  end
  redis.call('HSET', key, 'n', n)
end
local job = id .. '.s' .. gen
redis.call('HSET', key, 'name', ARGV[5], 'run_at', due, 'condition', ARGV[7], 'fallback', ARGV[8],
  'gen', gen, 'job', job, 'updated_at', now)
enqueue(job, 'orc', 'start|' .. id .. '|' .. gen, due, now, 1)
publish(owner, 'orchestration', id, 'scheduled')
wake(due, now, tonumber(ARGV[10]))
local view = orc_view(id)
return {'ok', view[1], view[2], view[3]}
"""

# ARGV: id, owner, now. Cancels the pending start or check job and a step task not yet called.
# Returns as ORC_MODIFY does.
ORC_CANCEL = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'owner', 'job', 'phase', 'current_step')
if not o[2] or o[2] ~= owner then return {'not_found'} end
if o[1] ~= 'scheduled' and o[1] ~= 'running' then return {'conflict', o[1]} end
drop_job(o[3])
if o[4] == 'step' then
  local tid = redis.call('HGET', key .. ':state', 't' .. o[5])
  if tid then
    if cancel_task(tid, now) == 'cancelled' then
      redis.call('HSET', key .. ':state', 's' .. o[5], 'cancelled')
    end
  end
end
finish_orc(id, owner, o[1], 'cancelled', now)
local view = orc_view(id)
return {'ok', view[1], view[2], view[3]}
"""

# ARGV: id, gen, now, first_task_id, wake_ms. The start event: run step 0.
ORC_START = """
local id, now = ARGV[1], tonumber(ARGV[3])
local o = redis.call('HMGET', okey(id), 'status', 'gen', 'owner')
if o[1] ~= 'scheduled' or o[2] ~= ARGV[2] then return 0 end
redis.call('HSET', okey(id), 'status', 'running')
move_status(o[3], 'orchestrations', id, 'scheduled', 'running')
start_step(id, o[3], 0, ARGV[4], now, tonumber(ARGV[5]))
return 1
"""

# ARGV: id, task_id, task_status, now, next_task_id, fallback_task_id, wake_ms.
# A step's (or the fallback's) task ended.
ORC_STEP_DONE = """
local id, tid, tstatus, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ahead = tonumber(ARGV[7])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'phase', 'current_step', 'owner', 'n', 'condition',
  'fallback', 'fallback_task')
if o[8] == tid then
  redis.call('HSET', key, 'fallback_status', tstatus, 'updated_at', now)
  publish(o[4], 'orchestration', id, o[1])
  return 'fallback'
end
if o[1] ~= 'running' or o[2] ~= 'step' then return 'stale' end
local i = tonumber(o[3])
if redis.call('HGET', key .. ':state', 't' .. i) ~= tid then return 'stale' end
redis.call('HSET', key .. ':state', 's' .. i, tstatus)
if tstatus ~= 'succeeded' then
  finish_orc(id, o[4], 'running', 'failed', now)
  run_fallback(id, o[4], o[7], ARGV[6], now, ahead)
  return 'failed'
end
if i == tonumber(o[5]) - 1 then
  finish_orc(id, o[4], 'running', 'succeeded', now)
  return 'succeeded'
end
local cond = condition_for(id, i, o[6])
if cond then
  local delay = tonumber(cjson.decode(cond).delay) or 0
  redis.call('HSET', key, 'phase', 'check', 'check_n', 0, 'updated_at', now)
  schedule_check(id, i, 1, now + math.floor(delay * 1000), now, ahead)
  publish(o[4], 'orchestration', id, 'running')
  return 'check'
end
start_step(id, o[4], i + 1, ARGV[5], now, ahead)
return 'next'
"""

# ARGV: id, step, attempt, passed (1/0), attempt_json, now, next_task_id, fallback_task_id, wake_ms
ORC_CHECK_DONE = """
local id, i, n, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[6])
local ahead = tonumber(ARGV[9])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'phase', 'current_step', 'check_n', 'owner',
  'condition', 'fallback')
if o[1] ~= 'running' or o[2] ~= 'check' or tonumber(o[3]) ~= i or tonumber(o[4]) ~= n - 1 then
  return 'stale'
end
redis.call('RPUSH', key .. ':check:' .. i, ARGV[5])
redis.call('HSET', key, 'check_n', n, 'job', '', 'updated_at', now)
if ARGV[4] == '1' then
  redis.call('HSET', key .. ':state', 'c' .. i, 'passed')
  start_step(id, o[5], i + 1, ARGV[7], now, ahead)
  return 'next'
end
local cond = cjson.decode(condition_for(id, i, o[6]))
if n <= (tonumber(cond.retries) or 0) then
  local wait = math.floor((tonumber(cond.retry_delay) or 1) * 1000)
  schedule_check(id, i, n + 1, now + wait, now, ahead)
  publish(o[5], 'orchestration', id, 'running')
  return 'recheck'
end
redis.call('HSET', key .. ':state', 'c' .. i, 'failed')
finish_orc(id, o[5], 'running', 'stopped', now)
run_fallback(id, o[5], o[7], ARGV[8], now, ahead)
return 'stopped'
"""


# ARGV: cutoff_ms, limit. Deletes records that finished before the cutoff (the retention
# janitor): a task with its attempts, or an orchestration with its steps' hashes and checks, and
# their index entries. Step and fallback tasks are tasks and expire on their own.
PURGE = """
local items = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(items) do
  redis.call('ZREM', P .. 'finished', member)
  local kind, id = string.sub(member, 1, 1), string.sub(member, 3)
  if kind == 't' then
    local key = P .. 'task:' .. id
    local t = redis.call('HMGET', key, 'owner', 'status')
    if t[1] then
      redis.call('ZREM', idx(t[1], 'tasks'), id)
      redis.call('ZREM', idx(t[1], 'tasks:' .. t[2]), id)
      redis.call('HINCRBY', P .. 'stats', 'tasks:' .. t[2], -1)
      redis.call('DEL', key, key .. ':attempts')
    end
  else
    local key = P .. 'orc:' .. id
    local o = redis.call('HMGET', key, 'owner', 'status', 'n')
    if o[1] then
      redis.call('ZREM', idx(o[1], 'orchestrations'), id)
      redis.call('ZREM', idx(o[1], 'orchestrations:' .. o[2]), id)
      redis.call('HINCRBY', P .. 'stats', 'orchestrations:' .. o[2], -1)
      for i = 0, tonumber(o[3]) - 1 do redis.call('DEL', key .. ':check:' .. i) end
      redis.call('DEL', key, key .. ':specs', key .. ':conds', key .. ':state')
    end
  end
end
return #items
"""

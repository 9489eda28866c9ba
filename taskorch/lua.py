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
local function wake(due, now, ahead)
  if due - now <= ahead then redis.call('PUBLISH', '{c.WAKE_CHANNEL}', due) end
end
"""

# ARGV: id, owner, spec, name, due, now, idem_key|'', idem_ttl_s, orchestration_id|'', wake_ms
CREATE_TASK = """
local id, owner, due, now = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
if ARGV[7] ~= '' then
  local existing = redis.call('GET', ARGV[7])
  if existing then return {0, existing} end
  redis.call('SET', ARGV[7], id, 'EX', ARGV[8])
end
local job = id .. '.1'
redis.call('HSET', P .. 'task:' .. id, 'id', id, 'owner', owner, 'status', 'scheduled',
  'spec', ARGV[3], 'name', ARGV[4], 'run_at', due, 'created_at', now, 'updated_at', now,
  'gen', 1, 'job', job, 'attempt', 0, 'lost', 0, 'orchestration_id', ARGV[9])
redis.call('ZADD', idx(owner, 'tasks'), 0, id)
move_status(owner, 'tasks', id, nil, 'scheduled')
enqueue(job, 'fire_task', id, due, now, 1)
publish(owner, 'task', id, 'scheduled')
wake(due, now, tonumber(ARGV[10]))
return {1, id}
"""

# ARGV: id, owner, now. Returns {'ok'} | {'not_found'} | {'conflict', status}
CANCEL_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = P .. 'task:' .. id
local t = redis.call('HMGET', key, 'status', 'owner', 'job')
if not t[2] or t[2] ~= owner then return {'not_found'} end
if t[1] ~= 'scheduled' and t[1] ~= 'retrying' then return {'conflict', t[1]} end
drop_job(t[3])
redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'updated_at', now, 'job', '')
move_status(owner, 'tasks', id, t[1], 'cancelled')
publish(owner, 'task', id, 'cancelled')
return {'ok'}
"""

# ARGV: id, owner, now, expected_gen, spec, name, due, wake_ms.
# Returns {'ok'} | {'not_found'} | {'conflict', status} | {'stale'} (re-read and try again)
MODIFY_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = P .. 'task:' .. id
local t = redis.call('HMGET', key, 'status', 'owner', 'job', 'gen')
if not t[2] or t[2] ~= owner then return {'not_found'} end
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
return {'ok'}
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

# ARGV: now, then pairs task_id, job. Returns per pair the attempt number, or 0 when the task
# was cancelled or modified since it was claimed (the compare-and-set that keeps old versions
# from ever firing).
START = """
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local id, job = ARGV[i], ARGV[i + 1]
  local key = P .. 'task:' .. id
  local t = redis.call('HMGET', key, 'status', 'job', 'owner', 'attempt', 'run_at')
  if (t[1] == 'scheduled' or t[1] == 'retrying') and t[2] == job then
    local n = tonumber(t[4]) + 1
    redis.call('HSET', key, 'status', 'running', 'attempt', n, 'started_at', now,
      'scheduled_for', t[5], 'updated_at', now)
    move_status(t[3], 'tasks', id, t[1], 'running')
    publish(t[3], 'task', id, 'running')
    out[#out + 1] = n
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
local t = redis.call('HMGET', key, 'status', 'job', 'owner', 'gen', 'orchestration_id')
for i = 8, #ARGV do redis.call('HINCRBY', P .. 'metrics', ARGV[i], 1) end
if t[1] ~= 'running' or t[2] ~= job then return 0 end
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
  if t[5] and t[5] ~= '' then
    -- an orchestration's step ended: hand it to the step machine through its own job
    local oj = t[5] .. '.' .. id .. '.' .. status
    enqueue(oj, 'advance', t[5] .. ' ' .. id .. ' ' .. status, now, now, 1)
    wake(now, now, tonumber(ARGV[7]))
  end
end
move_status(t[3], 'tasks', id, 'running', status)
publish(t[3], 'task', id, status)
return 1
"""

# ARGV: now, limit, max_lost. Recovers jobs whose claim lapsed: a worker died holding them.
# A claimed job that never started goes back to the queue; a task that was running gets a
# "worker lost" attempt and is retried at once. Returns the number of jobs recovered.
REAP = (
    """
local now, max_lost = tonumber(ARGV[1]), tonumber(ARGV[3])
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
        'started_at', 'scheduled_for', 'lost')
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
          move_status(t[3], 'tasks', id, 'running', 'failed')
          publish(t[3], 'task', id, 'failed')
        else
          local gen = tonumber(t[4]) + 1
          local nj = id .. '.' .. gen
          redis.call('HSET', key, 'status', 'retrying', 'gen', gen, 'job', nj, 'run_at', now,
            'updated_at', now, 'lost', lost)
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

# ARGV: worker_id, then pairs job, due. Hands claimed-but-unstarted jobs back on shutdown.
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

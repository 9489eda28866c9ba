-- The prelude of every task script: the partition's keys from KEYS[1] (its queue), the task
-- record's load/save (one msgpack string, defaults left out), batching of commuting writes, the
-- indexes, counters, events, enqueue/wake and the views the scripts answer. Defines no entry
-- point and returns nothing: a script includes it first.
--- @include "partition"
--- @include "queue"

local LEASES = P .. '${LEASES}'
local LEASE_OWNER = P .. '${LEASE_OWNER}'
local TDEF = {s = 'scheduled', g = 1, a = 0, l = 0, n = '', oi = '', sb = '', lj = '', rj = '', h = '',
  p = '', sc = '', q = ''}
local function tkey(id) return P .. '${TASK}' .. id end
-- msgpack on Redis; JSON where the Lua has no cmsgpack (fakeredis, for `taskorch dev`): the record's
-- numbers are integers below 2^53 and its spec a string, so cjson keeps them exact.
local pack_record = cmsgpack and cmsgpack.pack or cjson.encode
local unpack_record = cmsgpack and cmsgpack.unpack or cjson.decode
local function id_ms(id) return tonumber(string.sub(id, 5, 16), 16) end
local function load(id)
  local raw = redis.call('GET', tkey(id))
  if not raw then return nil end
  local t = unpack_record(raw)
  for k, v in pairs(TDEF) do if t[k] == nil then t[k] = v end end
  if t.c == nil then t.c = id_ms(id) end
  if t.u == nil then t.u = t.c end
  t.r = (t.r or 0) + id_ms(id)
  return t
end
local function save(id, t)
  local out = {}
  for k, v in pairs(t) do
    if v ~= TDEF[k] and v ~= '' then out[k] = v end
  end
  if out.u == t.c then out.u = nil end
  if out.c == id_ms(id) then out.c = nil end
  out.r = t.r - id_ms(id)
  if out.r == 0 then out.r = nil end
  redis.call('SET', tkey(id), pack_record(out))
end
local function active(t) return t.s == 'scheduled' or t.s == 'retrying' or t.s == 'running' end
local function job_of(id, t)
  if active(t) then return id .. '.' .. t.g end
  return ''
end
local function left_running(t) t.st = nil; t.sf = nil; t.sb = '' end
-- Scripts that change many tasks at once (a batch create, START, FINISH) merge the writes that
-- commute, so that Redis runs one command for the batch where it ran one per task: counters
-- (one HINCRBY per field), events (one message per owner, a JSON array), the wake-up (one, the
-- earliest), and the sorted-set entries of records this script creates (one ZADD per key; a
-- record that is not new may be removed again in the same batch, so its entries go at once).
-- batching() turns it on; flush() writes what was merged and must run before the script returns.
local ACC = nil
local function batching()
  ACC = {inc = {}, incf = {}, ikeys = {}, z = {}, zkeys = {}, ev = {}, evo = {},
    exp = {}, wake = nil}
end
local function incr(key, field, by, float)
  if not ACC then
    redis.call(float and 'HINCRBYFLOAT' or 'HINCRBY', key, field, by)
    return
  end
  local m = float and ACC.incf or ACC.inc
  local k = m[key]
  if not k then
    k = {}; m[key] = k
    ACC.ikeys[#ACC.ikeys + 1] = {key, float}
  end
  k[field] = (k[field] or 0) + tonumber(by)
end
local function zadd_new(key, score, member)
  if not ACC then
    redis.call('ZADD', key, score, member)
    return
  end
  local l = ACC.z[key]
  if not l then l = {}; ACC.z[key] = l; ACC.zkeys[#ACC.zkeys + 1] = key end
  l[#l + 1] = score; l[#l + 1] = member
end
local function flush()
  if not ACC then return end
  local a = ACC
  ACC = nil
  for _, key in ipairs(a.zkeys) do
    local l = a.z[key]
    for i = 1, #l, 4000 do redis.call('ZADD', key, unpack(l, i, math.min(i + 3999, #l))) end
  end
  for _, kf in ipairs(a.ikeys) do
    local key, float = kf[1], kf[2]
    for field, by in pairs((float and a.incf or a.inc)[key]) do
      if float then
        redis.call('HINCRBYFLOAT', key, field, string.format('%.3f', by))
      elseif by ~= 0 then
        redis.call('HINCRBY', key, field, by)
      end
    end
  end
  for key, ttl in pairs(a.exp) do redis.call('EXPIRE', key, ttl) end
  for _, owner in ipairs(a.evo) do
    local l = a.ev[owner]
    local msg = l[1]
    if #l > 1 then msg = '[' .. table.concat(l, ',') .. ']' end
    redis.call('PUBLISH', '${EVENTS_CHANNEL_PREFIX}' .. owner, msg)
  end
  if a.wake then redis.call('PUBLISH', '${WAKE_CHANNEL}', a.wake) end
end
local function move_status(ix, kind, owner, id, old, new)
  if old == new then return end
  if old then
    redis.call('ZREM', P .. ix .. owner .. ':' .. old, id)
    incr(P .. '${STATS}', kind .. ':' .. old, -1)
    redis.call('ZADD', P .. ix .. owner .. ':' .. new, 0, id)
  else
    zadd_new(P .. ix .. owner .. ':' .. new, 0, id)
  end
  incr(P .. '${STATS}', kind .. ':' .. new, 1)
end
-- ``q``: the task's named queue ('' or nil for default), whose own status index moves too.
local function move_task(owner, id, old, new, q)
  move_status('${TASK_INDEX}', 'tasks', owner, id, old, new)
  if q and q ~= '' and old ~= new then
    local ix = P .. '${QUEUE_INDEX}' .. owner .. ':' .. q .. ':'
    if old then
      redis.call('ZREM', ix .. old, id)
      redis.call('ZADD', ix .. new, 0, id)
    else
      zadd_new(ix .. new, 0, id)
    end
  end
end
local function move_orc(owner, id, old, new)
  move_status('${ORCH_INDEX}', 'orchestrations', owner, id, old, new)
end
-- A task's own job is <id>.<gen>; its callback jobs (<id>.cb<gen>.<n>, issue #12) are events.
local function is_task_job(job) return string.match(job, '^tsk_[^.]*%.%d+$') ~= nil end
local function task_of_job(job) return string.match(job, '^(.*)%.%d+$') end
-- An orchestration event's job: its definition at j:<job>, the job in the queue by due time.
local function enqueue(job, fn, arg, due, now)
  local data = cjson.encode({f = fn, a = {arg}})
  local ttl = math.max(due - now, 0) + 86400000
  redis.call('SET', P .. '${JOB}' .. job, data, 'PX', math.floor(ttl))
  redis.call('ZADD', QUEUE, due, job)
end
local function drop_job(job)
  if job and job ~= '' then
    redis.call('ZREM', QUEUE, job)
    if not is_task_job(job) then redis.call('DEL', P .. '${JOB}' .. job) end
    redis.call('ZREM', LEASES, job)
    redis.call('HDEL', LEASE_OWNER, job)
  end
end
-- Whether a job is still wanted: a task's when it is the task's current job, an event's while
-- its definition is kept.
local function job_live(job)
  if is_task_job(job) then
    local id = task_of_job(job)
    local t = id and load(id)
    return t ~= nil and t ~= false and job_of(id, t) == job
  end
  return redis.call('EXISTS', P .. '${JOB}' .. job) == 1
end
local function publish(owner, kind, id, status)
  local msg = cjson.encode({type = kind, id = id, status = status})
  if not ACC then
    redis.call('PUBLISH', '${EVENTS_CHANNEL_PREFIX}' .. owner, msg)
    return
  end
  local l = ACC.ev[owner]
  if not l then l = {}; ACC.ev[owner] = l; ACC.evo[#ACC.evo + 1] = owner end
  l[#l + 1] = msg
end
-- An Idempotency-Key: the id already created under it, or nil after claiming it for ``id``.
-- The key lives only as long as the record it names: once retention has deleted that record
-- (``record`` is its key prefix), a repeat claims the key afresh and creates anew. A key carried
-- over from the single-node layout (taskorch migrate) may name a record in another partition
-- (``n`` partitions, this one ``p``), which no script here can read: that answers
-- (existing, true) and the caller reads the record where it is.
local function idempotent(key, id, ttl, record, n, p)
  if key == '' then return nil end
  local existing = redis.call('GET', key)
  if existing and redis.call('EXISTS', record .. existing) == 1 then return existing end
  if existing and n and tonumber(string.sub(existing, -4), 16) % tonumber(n) ~= tonumber(p) then
    return existing, true
  end
  redis.call('SET', key, id, 'EX', ttl)
  return nil
end
-- What the API answers for a task (HGETALL-shaped, the names the models use), read in the script
-- that wrote it: a create, cancel or modify that Redis applied is never answered with a 503 from
-- a second round trip.
-- tostring() gives 14 significant digits (2.53402300799e+14 for a time in 9999): whole numbers
-- as integers, every digit.
local function int(x) return string.format('%d', x) end
local function task_view(id)
  local t = load(id)
  if not t then return {{}, {}} end
  local h = {'id', id, 'owner', t.o, 'status', t.s, 'url', t.h, 'spec', t.p, 'name', t.n,
    'run_at', int(t.r), 'created_at', int(t.c), 'updated_at', int(t.u),
    'attempt', int(t.a), 'gen', int(t.g), 'orchestration_id', t.oi, 'schedule_id', t.sc}
  if t.q ~= '' then h[#h + 1] = 'queue'; h[#h + 1] = t.q end
  if t.st then
    h[#h + 1] = 'started_at'; h[#h + 1] = int(t.st)
    h[#h + 1] = 'scheduled_for'; h[#h + 1] = int(t.sf)
  end
  if t.ft then h[#h + 1] = 'finished_at'; h[#h + 1] = int(t.ft) end
  -- issue #12: callback deliveries so far (a JSON array) and the callback job still due
  local cba = redis.call('LRANGE', tkey(id) .. '${CALLBACK_ATTEMPTS}', 0, -1)
  if #cba > 0 then h[#h + 1] = 'callback_attempts'; h[#h + 1] = '[' .. table.concat(cba, ',') .. ']' end
  if t.cj then h[#h + 1] = 'callback_job'; h[#h + 1] = t.cj end
  return {h, redis.call('LRANGE', tkey(id) .. ':a', 0, -1)}
end
-- Finished records, scored by when they finished, for the retention janitor (PURGE).
local function finished(kind, id, now)
  redis.call('ZADD', P .. '${FINISHED}', now, kind .. ':' .. id)
end
local function wake(due, now, ahead)
  if due - now > ahead then return end
  if not ACC then
    redis.call('PUBLISH', '${WAKE_CHANNEL}', due)
  elseif not ACC.wake or due < ACC.wake then
    ACC.wake = due
  end
end
-- Named queues (issue #12; taskorch/queues.py explains the flow): their keys, settings and
-- state are in lib/queue.lua. A task admitted (claimed under its queue's limits) carries qa = 1
-- until its attempt ends; that is what the queue's run counts.
-- Put a queue in line for admission (qr) at the time its first waiting task may go, or out of
-- it while it has none, is paused or is at its concurrency cap.
local function queue_kick(owner, q, now, ahead)
  local cf = queue_conf(owner, q)
  local member = owner .. ':' .. q
  local first = redis.call('ZRANGE', qwait(owner, q), 0, 0, 'WITHSCORES')
  if #first == 0 or cf.paused or (cf.mc and cf.run >= cf.mc) then
    redis.call('ZREM', QREADY, member)
    return
  end
  local at = math.max(tonumber(first[2]), cf.next)
  redis.call('ZADD', QREADY, at, member)
  if ahead then wake(at, now, ahead) end
end
-- An admitted task's attempt ended (or it was cancelled, changed or lost): its room goes to the
-- next waiting task. The caller saves t.
local function queue_release(t, now)
  if t.qa then
    t.qa = nil
    redis.call('HINCRBY', qkey('${QUEUE_CONF}', t.o, t.q), 'run', -1)
    queue_kick(t.o, t.q, now, ${CLAIM_AHEAD_MS})
  end
end
-- A task that will not go as it is (cancelled, modified) leaves its queue's line.
local function queue_leave(t, job, now)
  if t.q ~= '' then
    redis.call('ZREM', qwait(t.o, t.q), job)
    queue_release(t, now)
    queue_kick(t.o, t.q, now, nil)
  end
end
-- q: the task's named queue ('' or nil for default); sched: the schedule that made it ('' or nil
-- for none), kept as sc.
local function new_task(id, owner, url, spec, name, due, now, orc, ahead, q, sched)
  save(id, {o = owner, h = url, p = spec, r = due, n = name, oi = orc, c = now, u = now, q = q,
    sc = sched})
  move_task(owner, id, nil, 'scheduled', q)
  if q and q ~= '' then redis.call('SADD', P .. '${QUEUE_NAMES}' .. owner, q) end
  zadd_new(QUEUE, due, id .. '.1')
  publish(owner, 'task', id, 'scheduled')
  wake(due, now, ahead)
end
local function cancel_task(id, now)
  local t = load(id)
  if not t then return nil end
  if t.s ~= 'scheduled' and t.s ~= 'retrying' then return t.s end
  local old = t.s
  drop_job(job_of(id, t))
  queue_leave(t, job_of(id, t), now)
  t.s = 'cancelled'; t.ft = now; t.u = now
  save(id, t)
  finished('t', id, now)
  move_task(t.o, id, old, 'cancelled', t.q)
  publish(t.o, 'task', id, 'cancelled')
  return 'cancelled'
end

"""The Lua scripts that make every state change of a task atomic in Redis.

Each script is the prelude below plus its own body. A status change, its index update, the
enqueueing of the next job and the event for the live view happen in one script, so a crash can
never leave a task half-changed: that is what "nothing lost" rests on.

The partitioned layout (issue #10, taskorch/partitions.py): every script runs in ONE partition. It
is routed by ``KEYS[1]``, the partition's queue ``taskorch:{<tag>}:q``, and every key it derives
(``P .. 't:' .. id`` and so on) starts with the same prefix, hence carries the same hash tag and
lies in the same Redis Cluster slot. Nothing a script writes is global.

A task record is ONE string: a msgpack map with short field names, defaults left out, the id not
stored (it is in the key) and the spec an opaque JSON string that Lua never re-encodes (cjson would
round numbers). Fields: o owner, s status, h url, p the rest of the spec (JSON, short names: see
store._StoredSpec; a step's whole spec, url included, when h is absent), n name, r run_at (ms after the id's own time,
a small number), c created_at (left out when
it is the id's own time), u updated_at (left out when it equals created_at), g generation,
a attempt, l lost attempts, oi orchestration id, sc the schedule that made it, st/sf/sb started_at,
scheduled_for, started_by (while running), lj/rj lost_job/retry_job (a reaper's take-back marks),
ft finished_at, q queue (absent for default), qa admitted by its queue (see taskorch/queues.py);
issue #12: b the attempts made before the last redrive (retries count from there), cj the
callback job due.
A task's job is ``<id>.<generation>`` while it is scheduled, retrying or running, and has no
definition of its own.
"""

from __future__ import annotations

from taskorch import constants as c

PRELUDE = f"""
local P = string.sub(KEYS[1], 1, -{len(c.QUEUE) + 1})
local QUEUE = KEYS[1]
local LEASES = P .. '{c.LEASES}'
local LEASE_OWNER = P .. '{c.LEASE_OWNER}'
local TDEF = {{s = 'scheduled', g = 1, a = 0, l = 0, n = '', oi = '', sb = '', lj = '', rj = '', h = '',
  p = '', sc = '', q = ''}}
local function tkey(id) return P .. '{c.TASK}' .. id end
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
  local out = {{}}
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
  ACC = {{inc = {{}}, incf = {{}}, ikeys = {{}}, z = {{}}, zkeys = {{}}, ev = {{}}, evo = {{}},
    exp = {{}}, wake = nil}}
end
local function incr(key, field, by, float)
  if not ACC then
    redis.call(float and 'HINCRBYFLOAT' or 'HINCRBY', key, field, by)
    return
  end
  local m = float and ACC.incf or ACC.inc
  local k = m[key]
  if not k then
    k = {{}}; m[key] = k
    ACC.ikeys[#ACC.ikeys + 1] = {{key, float}}
  end
  k[field] = (k[field] or 0) + tonumber(by)
end
local function zadd_new(key, score, member)
  if not ACC then
    redis.call('ZADD', key, score, member)
    return
  end
  local l = ACC.z[key]
  if not l then l = {{}}; ACC.z[key] = l; ACC.zkeys[#ACC.zkeys + 1] = key end
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
    redis.call('PUBLISH', '{c.EVENTS_CHANNEL_PREFIX}' .. owner, msg)
  end
  if a.wake then redis.call('PUBLISH', '{c.WAKE_CHANNEL}', a.wake) end
end
local function move_status(ix, kind, owner, id, old, new)
  if old == new then return end
  if old then
    redis.call('ZREM', P .. ix .. owner .. ':' .. old, id)
    incr(P .. '{c.STATS}', kind .. ':' .. old, -1)
    redis.call('ZADD', P .. ix .. owner .. ':' .. new, 0, id)
  else
    zadd_new(P .. ix .. owner .. ':' .. new, 0, id)
  end
  incr(P .. '{c.STATS}', kind .. ':' .. new, 1)
end
-- ``q``: the task's named queue ('' or nil for default), whose own status index moves too.
local function move_task(owner, id, old, new, q)
  move_status('{c.TASK_INDEX}', 'tasks', owner, id, old, new)
  if q and q ~= '' and old ~= new then
    local ix = P .. '{c.QUEUE_INDEX}' .. owner .. ':' .. q .. ':'
    if old then
      redis.call('ZREM', ix .. old, id)
      redis.call('ZADD', ix .. new, 0, id)
    else
      zadd_new(ix .. new, 0, id)
    end
  end
end
local function move_orc(owner, id, old, new)
  move_status('{c.ORCH_INDEX}', 'orchestrations', owner, id, old, new)
end
-- A task's own job is <id>.<gen>; its callback jobs (<id>.cb<gen>.<n>, issue #12) are events.
local function is_task_job(job) return string.match(job, '^tsk_[^.]*%.%d+$') ~= nil end
local function task_of_job(job) return string.match(job, '^(.*)%.%d+$') end
-- An orchestration event's job: its definition at j:<job>, the job in the queue by due time.
local function enqueue(job, fn, arg, due, now)
  local data = cjson.encode({{f = fn, a = {{arg}}}})
  local ttl = math.max(due - now, 0) + 86400000
  redis.call('SET', P .. '{c.JOB}' .. job, data, 'PX', math.floor(ttl))
  redis.call('ZADD', QUEUE, due, job)
end
local function drop_job(job)
  if job and job ~= '' then
    redis.call('ZREM', QUEUE, job)
    if not is_task_job(job) then redis.call('DEL', P .. '{c.JOB}' .. job) end
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
  return redis.call('EXISTS', P .. '{c.JOB}' .. job) == 1
end
local function publish(owner, kind, id, status)
  local msg = cjson.encode({{type = kind, id = id, status = status}})
  if not ACC then
    redis.call('PUBLISH', '{c.EVENTS_CHANNEL_PREFIX}' .. owner, msg)
    return
  end
  local l = ACC.ev[owner]
  if not l then l = {{}}; ACC.ev[owner] = l; ACC.evo[#ACC.evo + 1] = owner end
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
  if not t then return {{{{}}, {{}}}} end
  local h = {{'id', id, 'owner', t.o, 'status', t.s, 'url', t.h, 'spec', t.p, 'name', t.n,
    'run_at', int(t.r), 'created_at', int(t.c), 'updated_at', int(t.u),
    'attempt', int(t.a), 'gen', int(t.g), 'orchestration_id', t.oi, 'schedule_id', t.sc}}
  if t.q ~= '' then h[#h + 1] = 'queue'; h[#h + 1] = t.q end
  if t.st then
    h[#h + 1] = 'started_at'; h[#h + 1] = int(t.st)
    h[#h + 1] = 'scheduled_for'; h[#h + 1] = int(t.sf)
  end
  if t.ft then h[#h + 1] = 'finished_at'; h[#h + 1] = int(t.ft) end
  -- issue #12: callback deliveries so far (a JSON array) and the callback job still due
  local cba = redis.call('LRANGE', tkey(id) .. '{c.CALLBACK_ATTEMPTS}', 0, -1)
  if #cba > 0 then h[#h + 1] = 'callback_attempts'; h[#h + 1] = '[' .. table.concat(cba, ',') .. ']' end
  if t.cj then h[#h + 1] = 'callback_job'; h[#h + 1] = t.cj end
  return {{h, redis.call('LRANGE', tkey(id) .. ':a', 0, -1)}}
end
-- Finished records, scored by when they finished, for the retention janitor (PURGE).
local function finished(kind, id, now)
  redis.call('ZADD', P .. '{c.FINISHED}', now, kind .. ':' .. id)
end
local function wake(due, now, ahead)
  if due - now > ahead then return end
  if not ACC then
    redis.call('PUBLISH', '{c.WAKE_CHANNEL}', due)
  elseif not ACC.wake or due < ACC.wake then
    ACC.wake = due
  end
end
-- Named queues (issue #12; taskorch/queues.py explains the flow). A queue's settings and state
-- are one hash qc:<owner>:<queue> (rate, mc, paused, next: the next free dispatch slot, run: its
-- admitted tasks) in the queue's partition, where its tasks live too. Due tasks of a limited
-- queue wait in qw:<owner>:<queue> by due time; qr lists the queues whose first waiting task may
-- be admitted, by when. A task admitted (claimed under its queue's limits) carries qa = 1 until
-- its attempt ends; that is what run counts.
local QREADY = P .. '{c.QUEUE_READY}'
local function qkey(kind, owner, q) return P .. kind .. owner .. ':' .. q end
local function qwait(owner, q) return qkey('{c.QUEUE_WAITING}', owner, q) end
local function queue_conf(owner, q)
  local r = redis.call('HMGET', qkey('{c.QUEUE_CONF}', owner, q), 'rate', 'mc', 'paused', 'next',
    'run')
  return {{rate = tonumber(r[1]), mc = tonumber(r[2]), paused = r[3] == '1',
    next = tonumber(r[4]) or 0, run = math.max(tonumber(r[5]) or 0, 0)}}
end
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
    redis.call('HINCRBY', qkey('{c.QUEUE_CONF}', t.o, t.q), 'run', -1)
    queue_kick(t.o, t.q, now, {c.CLAIM_AHEAD_MS})
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
  save(id, {{o = owner, h = url, p = spec, r = due, n = name, oi = orc, c = now, u = now, q = q,
    sc = sched}})
  move_task(owner, id, nil, 'scheduled', q)
  if q and q ~= '' then redis.call('SADD', P .. '{c.QUEUE_NAMES}' .. owner, q) end
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

# ARGV: now, idem_ttl_s, wake_ms, deadline_ms|'', partitions, this partition, then per task 8
#       fields: id, owner, url, spec (the rest of it, '' when all defaults), name, due,
#       idempotency key (the full key name in this partition, '' for none), queue ('' default).
# Returns per task {1} (created as given: the caller knows its view without a reply to build and
# parse, a batch's largest cost), {0, task view, attempts} (a repeat of a key, even within the
# batch: the task created under it) or {2, id} (a migrated key naming a record in another
# partition: see idempotent), or {-1} past the deadline (nothing written).
CREATE_TASKS = (
    PAST_DEADLINE
    + """
if past_deadline(ARGV[4]) then return {-1} end
local now, ttl, ahead = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
batching()
for i = 7, #ARGV, 8 do
  local id, owner = ARGV[i], ARGV[i + 1]
  local existing, elsewhere = idempotent(ARGV[i + 6], id, ttl, P .. 't:', ARGV[5], ARGV[6])
  if elsewhere then
    out[#out + 1] = {2, existing}
  elseif existing then
    local view = task_view(existing)
    out[#out + 1] = {0, view[1], view[2]}
  else
    new_task(id, owner, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), now, '',
      ahead, ARGV[i + 7])
    out[#out + 1] = {1}
  end
end
flush()
return out
"""
)

# ARGV: task ids. Returns per id {task view, attempts} ({{}, {}} where there is none).
VIEW_TASKS = """
local out = {}
for i = 1, #ARGV do out[i] = task_view(ARGV[i]) end
return out
"""

# ARGV: index prefix ('i:<owner>:' or 'oi:<owner>:'), cursor|'', limit, then statuses.
# One newest-first page of ids of this partition merged over the statuses' indexes: up to
# limit + 1 ids below the cursor (ids sort by creation time; the cursor is the last id handed out).
LIST_IDS = """
local ix, cursor, limit = P .. ARGV[1], ARGV[2], tonumber(ARGV[3])
local top = '+'
if cursor ~= '' then top = '(' .. cursor end
local all = {}
for i = 4, #ARGV do
  local ids = redis.call('ZREVRANGEBYLEX', ix .. ARGV[i], top, '-', 'LIMIT', 0, limit + 1)
  for _, id in ipairs(ids) do all[#all + 1] = id end
end
table.sort(all, function(a, b) return a > b end)
local out = {}
for i = 1, math.min(#all, limit + 1) do out[i] = all[i] end
return out
"""

# ARGV: id, owner, now.
# Returns {'ok', view, attempts} | {'not_found'} | {'conflict', status} | {'in_orchestration', id}
CANCEL_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'scheduled' and t.s ~= 'retrying' then return {'conflict', t.s} end
cancel_task(id, now)
local view = task_view(id)
return {'ok', view[1], view[2]}
"""

# ARGV: id, owner, now, expected_gen, url, spec, name, due, wake_ms. Returns {'ok', view, attempts}
# | {'not_found'} | {'conflict', status} | {'in_orchestration', id} | {'stale'} (re-read, retry)
MODIFY_TASK = """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'scheduled' and t.s ~= 'retrying' then return {'conflict', t.s} end
if int(t.g) ~= ARGV[4] then return {'stale'} end
drop_job(job_of(id, t))
queue_leave(t, job_of(id, t), now)
local due = tonumber(ARGV[8])
t.g = t.g + 1; t.h = ARGV[5]; t.p = ARGV[6]; t.n = ARGV[7]; t.r = due; t.u = now
save(id, t)
redis.call('ZADD', QUEUE, due, id .. '.' .. t.g)
publish(owner, 'task', id, t.s)
wake(due, now, tonumber(ARGV[9]))
local view = task_view(id)
return {'ok', view[1], view[2]}
"""

# Leases are scored on Redis's own clock: a worker that computed "now" and ran its script seconds
# later (a busy loop, a slow connect) must not hand Redis a lease that has already lapsed, and
# workers on different hosts then agree on when one lapses.
LEASE_CLOCK = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: horizon_ms, now_ms, lease_ms, worker_id, limit, claim id, the id of this worker's last
# claim whose reply it got ('' for none: its record is no longer needed), then the ids of its
# earlier claims whose replies it never got.
# Moves this partition's due jobs from its queue to its leases set, owned by this worker, and
# returns for each {job, due, function, argument, url, spec, base, owner[, scheduled]} (a
# task's url, spec, attempts made before its last redrive and owner; '', '', 0, '' for other
# jobs; scheduled, for a task, is the time it was due for this attempt: a named queue's task
# goes later than that, at its dispatch slot, and a task a reaper took back from a dead worker
# is in the queue from when it was taken back). A task's job that is no longer the task's
# current one is dropped.
#
# Issue #19: a claim is safe to lose. A claim whose reply was lost (a Redis frozen past the
# worker's socket timeout runs the script when it resumes) leaves its jobs in this worker's
# leases without the worker knowing; they would wait a whole lease. So each claim records what it
# claimed under its claim id (cr:<id>, for as long as a lease) and the worker names the claims it
# gave up on in its next claim, which adopts whatever of theirs is still leased to it. A claim
# that has not run yet when a later one names it finds a tombstone there and claims nothing
# (Redis may run them in either order), and a claim sent twice answers its first result again.
#
# Queues (issue #12): a due task of a named queue that is limited (a rate, a concurrency cap,
# paused) or has tasks waiting goes into the queue's line (qw) instead; then each queue whose
# turn has come (qr) admits its first waiting tasks in due order, each at its dispatch slot
# (rate: the next free slot, 1000 / rate ms after the last) while it has room (cap: run, the
# admitted tasks, below max_concurrent), as far as the claim's horizon. Default tasks pass as
# before.
CLAIM = (
    LEASE_CLOCK
    + f"""
local horizon, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[5])
local now = clock()
local out = {{}}
local CR, cid, worker = P .. '{c.CLAIM_RECORD}', ARGV[6] or '', ARGV[4]
local seen = {{}}
-- the jobs of an earlier claim (its record) still leased to this worker, as the claim answered
local function adopt(rec)
  local flat = cjson.decode(rec)
  for i = 1, #flat, 2 do
    local job, due = flat[i], flat[i + 1]
    if not seen[job] and redis.call('HGET', LEASE_OWNER, job) == worker
      and redis.call('ZSCORE', LEASES, job) then
      local row = nil
      if is_task_job(job) then
        local id = task_of_job(job)
        local t = id and load(id)
        if t and job_of(id, t) == job and (t.s == 'scheduled' or t.s == 'retrying') then
          row = {{job, due, 'fire_task', id, t.h, t.p, t.b or 0, t.o,
            int(math.min(t.r, tonumber(due)))}}
        end
      else
        local data = redis.call('GET', P .. '{c.JOB}' .. job)
        if data then
          local d = cjson.decode(data)
          row = {{job, due, d.f, d.a[1], '', '', 0, ''}}
        end
      end
      if row then
        seen[job] = true
        out[#out + 1] = row
        redis.call('ZADD', LEASES, math.max(tonumber(due), now) + lease, job)
      end
    end
  end
end
if cid ~= '' then
  local mine = redis.call('GET', CR .. cid)
  if mine == '' then return {{}} end  -- a later claim gave up on this one first: claim nothing
  if mine then  -- this same claim ran before (sent twice): its answer again
    adopt(mine)
    return out
  end
end
if ARGV[7] and ARGV[7] ~= '' then redis.call('DEL', CR .. ARGV[7]) end
for i = 8, #ARGV do
  local rec = redis.call('GET', CR .. ARGV[i])
  if rec == false then
    redis.call('SET', CR .. ARGV[i], '', 'PX', lease)  -- not run yet: when it does, nothing
  elseif rec ~= '' then
    adopt(rec)
  end
end
limit = limit + #out  -- what was adopted does not take the new claims' room
local gates, lines, held = {{}}, {{}}, 0
local function gated(t)  -- queues: whether t's queue decides when t goes
  local key = t.o .. ':' .. t.q
  if gates[key] == nil then
    local cf = queue_conf(t.o, t.q)
    gates[key] = (cf.rate or cf.mc or cf.paused
      or redis.call('EXISTS', qwait(t.o, t.q)) == 1) and true or false
  end
  return gates[key]
end
repeat
  if #out >= limit then break end
  local items = redis.call('ZRANGEBYSCORE', QUEUE, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0,
    limit - #out)
  local held_now = 0
  for i = 1, #items, 2 do
    local job, due = items[i], tonumber(items[i + 1])
    redis.call('ZREM', QUEUE, job)
    local fn, arg, url, spec, base, owner, sched = nil, nil, '', '', 0, '', nil
    if is_task_job(job) then
      local id = task_of_job(job)
      local t = id and load(id)
      if t and job_of(id, t) == job then
        if t.q ~= '' and not t.qa and gated(t) then
          redis.call('ZADD', qwait(t.o, t.q), due, job)
          lines[t.o .. ':' .. t.q] = {{t.o, t.q}}
          held_now = held_now + 1
        else
          fn, arg, url, spec = 'fire_task', id, t.h, t.p
          base, owner = t.b or 0, t.o  -- #12: attempts before a redrive; the owner signs the call
          sched = int(math.min(t.r, due))  -- #19: its own due time, not when a reaper put it back
        end
      end
    else
      local data = redis.call('GET', P .. 'j:' .. job)
      if data then
        local d = cjson.decode(data)
        fn, arg = d.f, d.a[1]
      end
    end
    if fn then
      redis.call('ZADD', LEASES, math.max(due, now) + lease, job)
      redis.call('HSET', LEASE_OWNER, job, ARGV[4])
      out[#out + 1] = {{job, items[i + 1], fn, arg, url, spec, base, owner, sched}}
    end
  end
  held = held + held_now
until held_now == 0 or #out >= limit or held >= {c.QUEUE_DIVERT_MAX}
for _, line in pairs(lines) do queue_kick(line[1], line[2], now, nil) end
local ready = redis.call('ZRANGEBYSCORE', QREADY, '-inf', horizon, 'LIMIT', 0,
  {c.QUEUE_PUMP_QUEUES})
for _, member in ipairs(ready) do
  if #out >= limit then break end
  local owner, q = string.match(member, '^(.*):([^:]*)$')
  local cf = queue_conf(owner, q)
  local wk = qwait(owner, q)
  local interval = cf.rate and 1000 / cf.rate
  local nxt, admitted = cf.next, 0
  while #out < limit and not cf.paused and not (cf.mc and cf.run + admitted >= cf.mc) do
    local first = redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    local job, slot = first[1], tonumber(first[2])
    if interval then slot = math.max(slot, nxt, now) end
    if slot > horizon then break end
    redis.call('ZREM', wk, job)
    local id = task_of_job(job)
    local t = id and load(id)
    if t and job_of(id, t) == job and (t.s == 'scheduled' or t.s == 'retrying') then
      local at = math.ceil(slot)
      t.qa = 1
      save(id, t)
      admitted = admitted + 1
      if interval then nxt = slot + interval end
      redis.call('ZADD', LEASES, math.max(at, now) + lease, job)
      redis.call('HSET', LEASE_OWNER, job, ARGV[4])
      out[#out + 1] = {{job, int(at), 'fire_task', id, t.h, t.p, t.b or 0, t.o, int(t.r)}}
    end
  end
  local qc = qkey('{c.QUEUE_CONF}', owner, q)
  if admitted > 0 then redis.call('HINCRBY', qc, 'run', admitted) end
  if interval and nxt ~= cf.next then redis.call('HSET', qc, 'next', string.format('%.3f', nxt)) end
  queue_kick(owner, q, now, nil)
end
if cid ~= '' and #out > 0 then
  local flat = {{}}
  for _, row in ipairs(out) do flat[#flat + 1] = row[1]; flat[#flat + 1] = row[2] end
  redis.call('SET', CR .. cid, cjson.encode(flat), 'PX', lease)
end
return out
"""
)

# ARGV: now, worker_id, lease_ms, then pairs task_id, job. Returns per pair the attempt number,
# or 0 when the task was cancelled or modified since it was claimed (the compare-and-set that
# keeps old versions from ever firing). Idempotent per job and worker: a START repeated by the
# worker that made it (its reply was lost: Redis crashed or froze) answers the same number again,
# so the worker calls once instead of leaving the task running with no call. The starting worker
# also takes the job's lease, wherever a reaper put it while this worker was out of reach: the
# one that starts a job is the one whose outcome counts.
START = (
    LEASE_CLOCK
    + """
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
"""
)

# ARGV: wake_ms, then rows, each its field count and then: id, job, outcome
#       (succeeded|failed|retry), attempt_json, next_due, now, metric fields... ("name" or
#       "name=x" for the partition's metrics hash; "~<ms>", the attempt's lateness, counted in
#       the owner's hash for the minute, constants.LATENESS_BY_MINUTE)
# Returns per row 1 when recorded, 0 when the attempt no longer owned the task (its lease lapsed
# and another worker recovered it).
FINISH = (
    """
local ahead = tonumber(ARGV[1])
local function finish(a)
  local id, job, outcome, now = a[1], a[2], a[3], tonumber(a[6])
  local lat = nil  -- "~<ms>": the attempt's lateness for the owner's by-minute figures
  for i = 7, #a do
    local f, by = string.match(a[i], '^(.+)=(.+)$')  -- "name=x" adds x, a bare name adds 1
    if string.sub(a[i], 1, 1) == '~' then lat = string.sub(a[i], 2)
    elseif f then incr(P .. 'm', f, by, true)
    else incr(P .. 'm', a[i], 1) end
  end
  local t = load(id)
  if not t then return 0 end
  if job_of(id, t) ~= job then
    -- A reaper took this attempt for lost although its worker was alive and held the outcome;
    -- the retry it enqueued has not started yet (START clears lj), so the real outcome wins:
    -- take back the "worker lost" record and the retry, and record what the call got.
    if t.s ~= 'retrying' or t.lj ~= job or job_of(id, t) ~= t.rj then return 0 end
    redis.call('RPOP', tkey(id) .. ':a')
    drop_job(job_of(id, t))
    redis.call('HINCRBY', P .. 'm', 'attempts_total:lost', -1)
    t.l = t.l - 1; t.lj = ''; t.rj = ''
    move_task(t.o, id, 'retrying', 'running', t.q)
    t.s = 'running'
  end
  if t.s ~= 'running' then return 0 end
  redis.call('RPUSH', tkey(id) .. ':a', a[4])
  if lat then  -- issue #13: GET /v1/stats/lateness reads these
    local lk = P .. '"""
    + c.LATENESS_BY_MINUTE
    + """' .. t.o .. ':' .. math.floor(now / 60000)
    incr(lk, lat, 1)
    if ACC then ACC.exp[lk] = """
    + str(c.LATENESS_TTL_S)
    + """ else redis.call('EXPIRE', lk, """
    + str(c.LATENESS_TTL_S)
    + """) end
  end
  drop_job(job)
  left_running(t)
  queue_release(t, now)  -- queues: the attempt's room goes to the next waiting task
  local status = outcome
  if outcome == 'retry' then
    status = 'retrying'
    local due = tonumber(a[5])
    t.s = status; t.g = t.g + 1; t.r = due; t.u = now
    save(id, t)
    redis.call('ZADD', QUEUE, due, id .. '.' .. t.g)
    wake(due, now, ahead)
  else
    t.s = status; t.ft = now; t.u = now
    schedule_callback(id, t, status, now, ahead)  -- issue #12 (lua.CALLBACKS)
    save(id, t)
    finished('t', id, now)
    if t.oi ~= '' then
      -- an orchestration's step ended: hand it to the step machine through its own job
      enqueue(t.oi .. '.' .. id .. '.' .. status, 'orc', 'done|' .. t.oi .. '|' .. id .. '|' .. status,
        now, now)
      wake(now, now, ahead)
    end
  end
  move_task(t.o, id, 'running', status, t.q)
  publish(t.o, 'task', id, status)
  return 1
end
local out = {}
local i = 2
batching()
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local row = {}
  for j = 1, n do row[j] = ARGV[i + j] end
  out[#out + 1] = finish(row)
  i = i + n + 1
end
flush()
return out
"""
)

# ARGV: now (unused: Redis's clock decides), limit, max_lost, gap_ms, grace_ms. Recovers this
# partition's jobs whose claim lapsed: a worker died holding them. A claimed job that never started
# goes back to the queue; a task that was running gets a "worker lost" attempt and is retried at
# once. Returns the number of jobs recovered, or -1 while it holds back after an outage.
#
# An outage is not a death: while Redis was out of reach (killed, frozen, cut off) no worker
# could renew its leases, so every lease may have lapsed by the time Redis is back, yet the
# workers holding them are alive, some with a call's outcome in hand. Reapers run every second
# or so; when the last reap is more than gap_ms old, nobody could reach Redis (or no worker ran),
# and no reaper recovers anything for grace_ms: long enough for every live worker to renew what
# it still holds. What has lapsed after that belonged to a dead worker, or was handed back.
REAP = (
    LEASE_CLOCK
    + """
local now, max_lost = clock(), tonumber(ARGV[3])
local gap, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local RK = P .. 'r'
local r = redis.call('HMGET', RK, 'last', 'grace_until')
local last, grace_until = tonumber(r[1]), tonumber(r[2] or '0')
if last and now - last > gap and now + grace > grace_until then
  grace_until = now + grace
  redis.call('HSET', RK, 'grace_until', grace_until)
end
if not last or now > last then redis.call('HSET', RK, 'last', now) end
if now < grace_until then return -1 end
local items = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, ARGV[2])
local n = 0
for _, job in ipairs(items) do
  redis.call('ZREM', LEASES, job)
  redis.call('HDEL', LEASE_OWNER, job)
  if not is_task_job(job) then
    if redis.call('EXISTS', P .. 'j:' .. job) == 1 then
      n = n + 1
      redis.call('ZADD', QUEUE, now, job)
    end
  else
    local id = task_of_job(job)
    local t = id and load(id)
    if t and job_of(id, t) == job then
      n = n + 1
      if (t.s == 'scheduled' or t.s == 'retrying') and t.qa then
        -- queues: admitted for a slot it never used: back in its line, to be paced again
        redis.call('ZADD', qwait(t.o, t.q), t.r, job)
        queue_release(t, now)
        save(id, t)
      elseif t.s == 'scheduled' or t.s == 'retrying' then
        redis.call('ZADD', QUEUE, now, job)
      elseif t.s == 'running' then
        t.l = t.l + 1
        redis.call('RPUSH', tkey(id) .. ':a', cjson.encode({n = t.a, sf = t.sf, st = t.st, ft = now,
          lat = t.st - t.sf, err = 'worker lost: no outcome within the lease, retrying'}))
        redis.call('HINCRBY', P .. 'm', 'attempts_total:lost', 1)
        left_running(t)
        queue_release(t, now)
        t.u = now
        if t.l > max_lost then
          t.s = 'failed'; t.ft = now
          schedule_callback(id, t, 'failed', now, 0)  -- issue #12 (lua.CALLBACKS)
          save(id, t)
          finished('t', id, now)
          move_task(t.o, id, 'running', 'failed', t.q)
          publish(t.o, 'task', id, 'failed')
          if t.oi ~= '' then
            enqueue(t.oi .. '.' .. id .. '.failed', 'orc', 'done|' .. t.oi .. '|' .. id .. '|failed',
              now, now)
          end
        else
          t.s = 'retrying'; t.g = t.g + 1; t.r = now; t.lj = job; t.rj = id .. '.' .. t.g
          save(id, t)
          redis.call('ZADD', QUEUE, now, t.rj)
          move_task(t.o, id, 'running', 'retrying', t.q)
          publish(t.o, 'task', id, 'retrying')
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

# ARGV: expiry_ms, then pairs job, due. Pushes held claims' leases forward; a lease that has
# already lapsed and been recovered is not revived (XX).
RENEW = (
    LEASE_CLOCK
    + """
local now, expiry = clock(), tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', LEASES, 'XX', math.max(tonumber(ARGV[i + 1]), now) + expiry, ARGV[i])
end
return 0
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
    if job_live(job) then
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
# An orchestration is a hash (o:<id>) plus per-step hashes keyed by step index: :specs (the step's
# task spec), :conds (a step's own condition), :state (t<i> task id, s<i> final step status,
# c<i> check status) and a list :check:<i> of check attempts. Advancing reads and writes only the
# fields of one index, so step 9,999 costs what step 1 does. Each transition is one script that
# checks the orchestration is where the event expects it (so a replayed event after a crash is a
# no-op) and creates the next step's task or job in the same breath. Its step tasks are created in
# its partition (their ids are made for it), so every transition stays in one slot.
ORC_PRELUDE = f"""
local function okey(id) return P .. '{c.ORCH}' .. id end
local function finish_orc(id, owner, old, status, now)
  redis.call('HSET', okey(id), 'status', status, 'finished_at', now, 'updated_at', now,
    'phase', 'done', 'job', '')
  finished('o', id, now)
  move_orc(owner, id, old, status)
  publish(owner, 'orchestration', id, status)
end
local function start_step(id, owner, i, task_id, now, ahead)
  local spec = redis.call('HGET', okey(id) .. ':specs', i)
  new_task(task_id, owner, '', spec, 'step ' .. i, now, now, id, ahead)
  redis.call('HSET', okey(id) .. ':state', 't' .. i, task_id)
  redis.call('HSET', okey(id), 'current_step', i, 'phase', 'step', 'updated_at', now, 'job', '')
  publish(owner, 'orchestration', id, 'running')
end
local function run_fallback(id, owner, fallback, fid, now, ahead)
  if fallback and fallback ~= '' then
    new_task(fid, owner, '', fallback, 'fallback', now, now, id, ahead)
    redis.call('HSET', okey(id), 'fallback_task', fid, 'fallback_status', 'scheduled')
  end
end
-- What the API needs to answer for an orchestration, read in the script that wrote it: its hash,
-- its :state and which steps have a condition of their own.
local function orc_view(id)
  return {{redis.call('HGETALL', okey(id)), redis.call('HGETALL', okey(id) .. ':state'),
    redis.call('HKEYS', okey(id) .. ':conds')}}
end
local function condition_for(id, i, shared)
  local own = redis.call('HGET', okey(id) .. ':conds', i)
  if own then return own end
  if shared and shared ~= '' then return shared end
  return nil
end
local function schedule_check(id, i, n, due, now, ahead)
  local job = id .. '.c' .. i .. '.' .. n
  enqueue(job, 'orc', 'check|' .. id .. '|' .. i .. '|' .. n, due, now)
  redis.call('HSET', okey(id), 'job', job)
  redis.call('HSET', okey(id) .. ':state', 'c' .. i, 'waiting')
  wake(due, now, ahead)
end
"""

# ARGV: id, owner, name, due, now, condition|'', fallback|'', idem_key|'', idem_ttl, wake_ms, n,
#       then n step specs, then n step conditions ('' where the step has none), then
#       deadline_ms|'' (see PAST_DEADLINE), partitions, this partition.
# Returns {created (1/0), hash, state, own-condition step indexes} (see orc_view), {2, id} (see
# idempotent), or {-1}.
ORC_CREATE = (
    PAST_DEADLINE
    + """
if past_deadline(ARGV[12 + 2 * tonumber(ARGV[11])]) then return {-1} end
local id, owner, due, now = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
local nsteps = tonumber(ARGV[11])
local existing, elsewhere = idempotent(ARGV[8], id, ARGV[9], P .. 'o:', ARGV[13 + 2 * nsteps],
  ARGV[14 + 2 * nsteps])
if elsewhere then return {2, existing} end
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
move_orc(owner, id, nil, 'scheduled')
enqueue(id .. '.s1', 'orc', 'start|' .. id .. '|1', due, now)
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
enqueue(job, 'orc', 'start|' .. id .. '|' .. gen, due, now)
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
move_orc(o[3], id, 'scheduled', 'running')
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
ORC_CHECK_DONE = (
    """
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
  -- never sooner than constants.MIN_RETRY_DELAY_S, as a task's retries
  local wait = math.max("""
    + str(int(c.MIN_RETRY_DELAY_S * 1000))
    + """, math.floor((tonumber(cond.retry_delay) or 1) * 1000))
  schedule_check(id, i, n + 1, now + wait, now, ahead)
  publish(o[5], 'orchestration', id, 'running')
  return 'recheck'
end
redis.call('HSET', key .. ':state', 'c' .. i, 'failed')
finish_orc(id, o[5], 'running', 'stopped', now)
run_fallback(id, o[5], o[7], ARGV[8], now, ahead)
return 'stopped'
"""
)


# ARGV: cutoff_ms, limit. Deletes this partition's records that finished before the cutoff (the
# retention janitor): a task with its attempts, or an orchestration with its steps' hashes and
# checks, and their index entries. Step and fallback tasks are tasks and expire on their own.
PURGE = (
    """
local function drop_task(id, t)
  redis.call('ZREM', P .. 'i:' .. t.o .. ':' .. t.s, id)
  if t.sc ~= '' then redis.call('ZREM', P .. 'iS:' .. t.o .. ':' .. t.sc, id) end  -- sched
  if t.q ~= '' then redis.call('ZREM', P .. 'iq:' .. t.o .. ':' .. t.q .. ':' .. t.s, id) end
  redis.call('HINCRBY', P .. 's', 'tasks:' .. t.s, -1)
  redis.call('DEL', tkey(id), tkey(id) .. ':a', tkey(id) .. ':cb')  -- :cb callback attempts
end
local items = redis.call('ZRANGEBYSCORE', P .. 'f', '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(items) do
  redis.call('ZREM', P .. 'f', member)
  local kind, id = string.sub(member, 1, 1), string.sub(member, 3)
  if kind == 't' then
    local t = load(id)
    if t then drop_task(id, t) end
  else
    local key = okey(id)
    local o = redis.call('HMGET', key, 'owner', 'status', 'n')
    if o[1] then
      redis.call('ZREM', P .. 'oi:' .. o[1] .. ':' .. o[2], id)
      redis.call('HINCRBY', P .. 's', 'orchestrations:' .. o[2], -1)
      for i = 0, tonumber(o[3]) - 1 do redis.call('DEL', key .. ':check:' .. i) end
      redis.call('DEL', key, key .. ':specs', key .. ':conds', key .. ':state')
    end
  end
end
local done = #items
if not ARGV[3] then return done end
-- Deleted schedules (constants.SCHEDULES_DELETED), ARGV: now, the cutoff for all of them, keep.
-- The oldest occurrences beyond the newest ``keep`` go now (sdt), the rest once their
-- schedule was deleted before the cutoff (sd). Finished ones are deleted; any other only leaves
-- the schedule's list, and the retention deletes it once it finishes, like any task.
local budget = tonumber(ARGV[2]) - done
local function reap(zset, cutoff, keep)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', cutoff, 'LIMIT', 0, 10)) do
    if budget <= 0 then return end
    local sep = string.find(member, ':', 1, true)
    local made = P .. '"""
    + c.SCHEDULE_TASKS
    + """' .. string.sub(member, sep + 1) .. ':' .. string.sub(member, 1, sep - 1)
    local n = math.min(budget, redis.call('ZCARD', made) - keep)
    if n > 0 then
      for _, tid in ipairs(redis.call('ZRANGE', made, 0, n - 1)) do
        local t = load(tid)
        if t and (t.s == 'succeeded' or t.s == 'failed' or t.s == 'cancelled') then
          redis.call('ZREM', P .. 'f', 't:' .. tid)
          drop_task(tid, t)
        end
        redis.call('ZREM', made, tid)
      end
      budget = budget - n
      done = done + n
    end
    if redis.call('ZCARD', made) <= keep then redis.call('ZREM', zset, member) end
  end
end
reap(P .. '"""
    + c.SCHEDULES_DELETED_TRIM
    + """', ARGV[3], tonumber(ARGV[5]))
reap(P .. '"""
    + c.SCHEDULES_DELETED
    + """', ARGV[4], 0)
return done
"""
)


# -- recurring schedules (issue #12) -------------------------------------------------------------
# A schedule is a hash sc:<id> (o owner, s status, n name, cron, ev every ms, tz, task (its body,
# JSON), sa start_at, ea end_at ('' none), cu catch_up, c/u created/updated, v version, mu "made
# until": every run time up to it was made or skipped). Its occurrences are ordinary tasks with sc
# set, listed in iS:<owner>:<id>. Every change bumps v; the makers compute the next occurrences in
# Python and hand them to SCHED_MAKE with the version they read, so two makers with the same view
# make them once (the second finds v moved on and makes nothing).
SCHED_PRELUDE = f"""
local SZ = P .. '{c.SCHEDULES_DUE}'
local function skey(id) return P .. '{c.SCHEDULE}' .. id end
local function made_key(owner, id) return P .. '{c.SCHEDULE_TASKS}' .. owner .. ':' .. id end
local function move_sched(owner, id, old, new)
  move_status('{c.SCHEDULE_INDEX}', 'schedules', owner, id, old, new)
end
-- The hash and the last occurrence whose time has come (ids below ``bound``, the id prefix of
-- now + 1 ms: an occurrence's id carries its due time).
local function sched_view(id, bound)
  local h = redis.call('HGETALL', skey(id))
  if #h == 0 then return {{{{}}, ''}} end
  local owner = redis.call('HGET', skey(id), 'o')
  local last = redis.call('ZREVRANGEBYLEX', made_key(owner, id), '(' .. bound, '-', 'LIMIT', 0, 1)
  return {{h, last[1] or ''}}
end
-- Cancel the occurrences made but not started: all of them (``all``), else those due after now.
-- Returns the latest due time after now of one that could not be cancelled (it started a few ms
-- early), or now: nothing may be made again up to it.
local function cancel_made(owner, id, now, all)
  local key = made_key(owner, id)
  local keep, off = now, 0
  while off < {c.SCHEDULE_CANCEL_SCAN} do
    local ids = redis.call('ZREVRANGEBYLEX', key, '+', '-', 'LIMIT', off, 100)
    if #ids == 0 then return keep end
    for _, tid in ipairs(ids) do
      local t = load(tid)
      if not t then return keep end
      if t.s == 'scheduled' and (all or t.r > now) then
        cancel_task(tid, now)
      elseif t.s ~= 'scheduled' and t.s ~= 'cancelled' and t.r > keep then
        keep = t.r
      elseif t.s ~= 'scheduled' and t.r < now - {c.SCHEDULE_CANCEL_SLACK_MS} then
        return keep
      end
    end
    off = off + 100
  end
  return keep
end
"""

# KEYS: queue, sc:<id>, sz. ARGV: id, owner, now, bound, status (active, or ended when no run
# time is left), idempotency key (its full name, '' for none), its ttl, then field/value pairs.
# Returns {created (1/0), id, sched_view's {hash, last task id}}: a repeat of the key answers
# the schedule created under it.
SCHED_CREATE = (
    """
local id, owner, now, status = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local existing = idempotent(ARGV[6], id, ARGV[7], P .. '"""
    + c.SCHEDULE
    + """')
if existing then return {0, existing, sched_view(existing, ARGV[4])} end
-- made until just before now: a grid that starts now (every, without start_at) runs at once
redis.call('HSET', KEYS[2], 'o', owner, 's', status, 'v', 1, 'c', now, 'u', now, 'mu', now - 1)
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
move_sched(owner, id, nil, status)
if status == 'active' then redis.call('ZADD', KEYS[3], now, id) end
publish(owner, 'schedule', id, status)
return {1, id, sched_view(id, ARGV[4])}
"""
)

# ARGV: bound, then ids. Returns per id sched_view's {hash, last task id} ({{}, ''} for none).
SCHED_VIEW = """
local out = {}
for i = 2, #ARGV do out[#out + 1] = sched_view(ARGV[i], ARGV[1]) end
return out
"""

# KEYS: queue, sc:<id>, sz. ARGV: op (patch|pause|resume|delete), id, owner, now, bound,
# expected version ('' for any), then (patch) field/value pairs.
# Returns {'ok', view} | {'deleted'} | {'not_found'} | {'conflict', status} | {'stale'}.
# Pause cancels every occurrence made but not started; a change cancels those due after now and
# has the new definition made from now on; resume makes from now on (a pause is not downtime:
# nothing missed while paused is caught up); delete cancels like pause and removes the schedule
# (its tasks stay, with their schedule_id, until retention deletes them).
SCHED_CHANGE = (
    """
local op, id, owner, now, bound = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local key = KEYS[2]
local s = redis.call('HMGET', key, 'o', 's', 'v')
if not s[1] or s[1] ~= owner then return {'not_found'} end
if ARGV[6] ~= '' and s[3] ~= ARGV[6] then return {'stale'} end
local status, v = s[2], tonumber(s[3]) + 1
if op == 'delete' then
  cancel_made(owner, id, now, true)
  if redis.call('EXISTS', made_key(owner, id)) == 1 then  -- for the janitor (lua.PURGE)
    redis.call('ZADD', P .. '"""
    + c.SCHEDULES_DELETED_TRIM
    + """', now, id .. ':' .. owner)
    redis.call('ZADD', P .. '"""
    + c.SCHEDULES_DELETED
    + """', now, id .. ':' .. owner)
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', P .. '"""
    + c.SCHEDULE_INDEX
    + """' .. owner .. ':' .. status, id)
  redis.call('HINCRBY', P .. '"""
    + c.STATS
    + """', 'schedules:' .. status, -1)
  publish(owner, 'schedule', id, 'deleted')
  return {'deleted'}
end
if status == 'ended' then return {'conflict', status} end
local new = status
if op == 'pause' then
  if status == 'active' then
    cancel_made(owner, id, now, true)
    redis.call('ZREM', KEYS[3], id)
    new = 'paused'
  end
elseif op == 'resume' then
  if status == 'paused' then
    redis.call('HSET', key, 'mu', now)
    redis.call('ZADD', KEYS[3], now, id)
    new = 'active'
  end
else
  for i = 7, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  if status == 'active' then
    redis.call('HSET', key, 'mu', cancel_made(owner, id, now, false))
    redis.call('ZADD', KEYS[3], now, id)
  end
end
if new ~= status or op == 'patch' then
  redis.call('HSET', key, 's', new, 'v', v, 'u', now)
  move_sched(owner, id, status, new)
  publish(owner, 'schedule', id, new)
end
return {'ok', sched_view(id, bound)}
"""
)

# ARGV: now, limit, this maker's own last round here (Redis ms; '' when it cannot vouch that it
# has been trying every second since). The makers' round in this partition: {down, schedules,
# at, cut, from}: the schedules whose next occurrences are due to be made, each {id, hash};
# down = 1 when every worker was down, so that what was missed follows each schedule's
# catch_up, with the missed cut-off (when the downtime was seen, less SCHEDULE_LATE_MS) cut ms
# ago and the last round before the downtime from ms ago; at, this round's time, for the maker
# to name in its next round. Redis's clock, so that workers whose clocks differ agree.
#
# Issue #19: a gap in the makers' rounds is not a downtime when the maker that looks was alive
# through it (a Redis outage stops every round, not the workers): a maker that ran a round here
# before the gap and has tried every second since says so, and nothing is caught up; the
# missed times are made as late runs. A gap seen without that is a downtime, decided once for
# SCHEDULE_DOWN_DECIDED_MS: every worker that comes back in that time makes its first round
# with the same verdict and cut-off before it claims, so none of them fires an overdue
# occurrence beside the catch-up.
SCHED_DUE = (
    LEASE_CLOCK
    + f"""
local now, at = tonumber(ARGV[1]), clock()
local mine = tonumber(ARGV[3] or '')
local M = P .. '{c.SCHEDULE_MAKERS}'
local r = redis.call('HMGET', M, 'last', 'down_at', 'down_cut', 'down_from')
local prev, down_at = tonumber(r[1] or ''), tonumber(r[2] or '')
local cut, from = tonumber(r[3] or ''), tonumber(r[4] or '')
if down_at and at - down_at > {c.SCHEDULE_DOWN_DECIDED_MS} then down_at = nil end
local down = 0
if mine and (not down_at or mine < down_at) then
  down_at = nil  -- alive through the gap: no downtime (nor one another maker took for it)
elseif down_at then
  down = 1
elseif not prev or at - prev > {c.SCHEDULE_LATE_MS} then
  down, down_at, cut, from = 1, at, at - {c.SCHEDULE_LATE_MS}, prev or 0
  redis.call('HSET', M, 'down_at', at, 'down_cut', cut, 'down_from', from)
end
if not down_at then redis.call('HDEL', M, 'down_at', 'down_cut', 'down_from') end
redis.call('HSET', M, 'last', at)
local out = {{}}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', SZ, '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local h = redis.call('HGETALL', skey(id))
  if #h == 0 then redis.call('ZREM', SZ, id) else out[#out + 1] = {{id, h}} end
end
if down == 0 then return {{0, out, at, 0, 0}} end
return {{1, out, at, at - cut, at - from}}
"""
)

# KEYS: queue, sc:<id>, sz. ARGV: id, expected version, now, made until, next look (ms, or ''
# when the schedule has ended), wake_ms, catch-up ('' for none, else the missed cut-off ms and
# the mode one|none|all), caught-up count (the first occurrences are missed times being caught
# up), the downtime's start (ms: the last round before it), the schedule's queue ('' for
# default), then per occurrence: task id, due, url, spec, name.
# Returns how many tasks it made, or -1 when the schedule changed since it was read.
# With a catch-up, occurrences made earlier and still not started at the cut-off were missed too:
# "none" cancels them, "one" keeps the latest missed time only (a new one, or the latest of them),
# "all" keeps them. For "one", an overdue occurrence that has started since the downtime began
# (it raced this script) is that one late run: the others are cancelled and the caught-up
# occurrence is not made (issue #19).
SCHED_MAKE = (
    """
local id, now = ARGV[1], tonumber(ARGV[3])
local key = KEYS[2]
local s = redis.call('HMGET', key, 'o', 's', 'v')
if not s[1] or s[2] ~= 'active' or s[3] ~= ARGV[2] then return -1 end
local owner = s[1]
local made = made_key(owner, id)
local skip = 0  -- caught-up occurrences not to make: one already ran
if ARGV[7] ~= '' then
  local cut, mode, fresh = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
  local from = tonumber(ARGV[10]) + """
    + str(2 * c.CLAIM_AHEAD_MS)
    + """  -- started later than this: during the downtime
  if mode ~= 'all' then
    local off, waiting, started = 0, {}, false
    while off < """
    + str(c.SCHEDULE_CANCEL_SCAN)
    + """ do
      local ids = redis.call('ZREVRANGEBYLEX', made, '+', '-', 'LIMIT', off, 100)
      if #ids == 0 then break end
      local stop = false
      for _, tid in ipairs(ids) do
        local t = load(tid)
        if not t then stop = true; break end
        if t.s == 'scheduled' and t.r <= cut then
          waiting[#waiting + 1] = tid
        elseif t.s ~= 'scheduled' and t.r <= cut then
          if t.r <= from then stop = true; break end
          if t.s ~= 'cancelled' then started = true end
        end
      end
      if stop then break end
      off = off + 100
    end
    local keep = mode == 'one' and fresh == 0 and not started
    if mode == 'one' and started then skip = fresh end
    for i, tid in ipairs(waiting) do
      if not (keep and i == 1) then cancel_task(tid, now) end
    end
  end
end
local ahead, n, q = tonumber(ARGV[6]), 0, ARGV[11]
for i = 12 + 5 * skip, #ARGV, 5 do
  local tid = ARGV[i]
  new_task(tid, owner, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 1]), now, '', ahead, q, id)
  redis.call('ZADD', made, 0, tid)
  n = n + 1
end
redis.call('HSET', key, 'mu', ARGV[4], 'v', tonumber(s[3]) + 1)
if ARGV[5] == '' then
  redis.call('HSET', key, 's', 'ended', 'u', now)
  redis.call('ZREM', KEYS[3], id)
  move_sched(owner, id, 'active', 'ended')
  publish(owner, 'schedule', id, 'ended')
else
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), id)
end
return n
"""
)

# ARGV: owner, schedule id, cursor|'', limit, status|'', budget, name prefix|''. One newest-first
# page (up to limit + 1) of the tasks a schedule made, below the cursor, of that status and name
# when given: {ids, the last id read when a filter had read budget records without filling the
# page, else ''} (as LIST_SCAN: the budget bounds the request's Redis time).
SCHED_TASK_IDS = """
local key = made_key(ARGV[1], ARGV[2])
local top = '+'
if ARGV[3] ~= '' then top = '(' .. ARGV[3] end
local limit, want, budget, name = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
if want == '' and name == '' then
  return {redis.call('ZREVRANGEBYLEX', key, top, '-', 'LIMIT', 0, limit + 1), ''}
end
local ids = redis.call('ZREVRANGEBYLEX', key, top, '-', 'LIMIT', 0, budget + 1)
local out, last = {}, ''
for i = 1, math.min(#ids, budget) do
  local t = load(ids[i])
  if t and (want == '' or t.s == want) and string.sub(t.n, 1, #name) == name then
    out[#out + 1] = ids[i]
    if #out > limit then return {out, ''} end
  end
  last = ids[i]
end
if #ids > budget then return {out, last} end
return {out, ''}
"""
# -- signed calls (issue #12) -------------------------------------------------------------------
# An owner's signing secrets: the hash KEYS[1] = sk:<owner> in the owner's partition, fields cur,
# cur_at (ms) and, after a rotation, prev, prev_at, prev_until (ms). Neither script needs the
# prelude: they touch that one key.

# ARGV: a fresh secret, now_ms. The secrets, the first made now if there is none; a previous one
# past its prev_until is dropped. Returns the hash (HGETALL).
SIGNING_READ = """
local k, now = KEYS[1], tonumber(ARGV[2])
if redis.call('HEXISTS', k, 'cur') == 0 then
  redis.call('HSET', k, 'cur', ARGV[1], 'cur_at', ARGV[2])
end
local until_ms = tonumber(redis.call('HGET', k, 'prev_until') or '0')
if until_ms > 0 and until_ms <= now then redis.call('HDEL', k, 'prev', 'prev_at', 'prev_until') end
return redis.call('HGETALL', k)
"""

# ARGV: a fresh secret, now_ms, overlap_ms. The fresh secret becomes the current one; the current
# one signs too until now + overlap (one before it, if still signing, retires now). With no secret
# yet, the fresh one is simply the first. Returns the hash (HGETALL).
SIGNING_ROTATE = """
local k, now = KEYS[1], tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'cur', 'cur_at')
if cur[1] then
  redis.call('HSET', k, 'prev', cur[1], 'prev_at', cur[2], 'prev_until',
    string.format('%d', now + tonumber(ARGV[3])))
end
redis.call('HSET', k, 'cur', ARGV[1], 'cur_at', ARGV[2])
return redis.call('HGETALL', k)
"""


# -- redrive (issue #12) ------------------------------------------------------------------------
# ARGV: id, owner, now, wake_ms. A failed task is scheduled again now with a fresh retry budget:
# b (the attempts made before) lets the worker count its retries from there, while attempt
# numbers go on; l (lost attempts) starts over; a callback of the earlier outcome not yet
# delivered is dropped (its Task is no longer final). Returns as CANCEL_TASK does.
RETRY_TASK = (
    """
local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'failed' then return {'conflict', t.s} end
if t.cj then drop_job(t.cj); t.cj = nil end
t.b = t.a; t.l = 0; t.g = t.g + 1; t.r = now; t.u = now; t.ft = nil; t.s = 'scheduled'
save(id, t)
redis.call('ZREM', P .. '"""
    + c.FINISHED
    + """', 't:' .. id)  -- no longer finished: retention must not delete it
move_task(owner, id, 'failed', 'scheduled', t.q)
redis.call('ZADD', QUEUE, now, id .. '.' .. t.g)
publish(owner, 'task', id, 'scheduled')
wake(now, now, tonumber(ARGV[4]))
local view = task_view(id)
return {'ok', view[1], view[2]}
"""
)


# -- queues (issue #12) --------------------------------------------------------------------------
# A named queue's settings and state are in its partition (see PRELUDE's queue helpers); these
# scripts serve the API's /v1/queues. Each takes the task statuses to count last in ARGV.
QUEUE_PRELUDE = f"""
-- {{settings {{rate, mc, paused}}, counts by status (ARGV from ``from`` on), waiting}}
local function queue_view(owner, q, from)
  local counts = {{}}
  local ix = qkey('{c.QUEUE_INDEX}', owner, q) .. ':'
  for i = from, #ARGV do counts[#counts + 1] = redis.call('ZCARD', ix .. ARGV[i]) end
  return {{redis.call('HMGET', qkey('{c.QUEUE_CONF}', owner, q), 'rate', 'mc', 'paused'), counts,
    redis.call('ZCARD', qwait(owner, q))}}
end
"""

# ARGV: owner, queue, statuses... Returns the queue's view, or {} when the owner has no such
# queue (never set, no task ever named it).
QUEUE_GET = f"""
if redis.call('SISMEMBER', P .. '{c.QUEUE_NAMES}' .. ARGV[1], ARGV[2]) == 0 then return {{}} end
return queue_view(ARGV[1], ARGV[2], 3)
"""

# ARGV: owner, queue, now, rate, max_concurrent, paused, statuses... where a setting is '' to
# keep it, 'null' to lift it, else its value (paused '0' or '1'). Returns the queue's view. A new
# rate takes effect at once: a slot reserved under a slower one is brought forward. Whatever
# the change, the queue's waiting tasks are looked at again (resumed, more room).
QUEUE_PUT = f"""
local owner, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = qkey('{c.QUEUE_CONF}', owner, q)
local old_rate = tonumber(redis.call('HGET', key, 'rate'))
local function set(field, v)
  if v == 'null' then redis.call('HDEL', key, field)
  elseif v ~= '' then redis.call('HSET', key, field, v) end
end
set('rate', ARGV[4]); set('mc', ARGV[5]); set('paused', ARGV[6])
local rate = tonumber(redis.call('HGET', key, 'rate'))
if rate and rate ~= old_rate then
  local nxt = tonumber(redis.call('HGET', key, 'next')) or 0
  if nxt > now + 1000 / rate then
    redis.call('HSET', key, 'next', string.format('%.3f', now + 1000 / rate))
  end
end
redis.call('SADD', P .. '{c.QUEUE_NAMES}' .. owner, q)
queue_kick(owner, q, now, {c.CLAIM_AHEAD_MS})
return queue_view(owner, q, 7)
"""

# ARGV: owner, statuses... Returns {the owner's task counts by status in this partition (every
# queue's), {name, view} per named queue of the owner in this partition}.
QUEUE_LIST = f"""
local owner = ARGV[1]
local totals = {{}}
for i = 2, #ARGV do
  totals[#totals + 1] = redis.call('ZCARD', P .. '{c.TASK_INDEX}' .. owner .. ':' .. ARGV[i])
end
local queues = {{}}
for _, q in ipairs(redis.call('SMEMBERS', P .. '{c.QUEUE_NAMES}' .. owner)) do
  queues[#queues + 1] = {{q, queue_view(owner, q, 2)}}
end
return {{totals, queues}}
"""


# -- callbacks (issue #12) ----------------------------------------------------------------------
# A task that ends succeeded (or failed) with a callback (failure_callback) in its spec gets a job
# 'cb' that POSTs the final Task there (taskorch/callbacks.py). It is made by the script that
# records the outcome (FINISH, or REAP when lost attempts run out), so there is one per outcome,
# in the task's partition, whatever becomes of the worker. The job is <id>.cb<gen>.<n> (n the
# delivery attempt), its argument <id>|<gen>|<status>|<n>; the record's cj names it while due.
# The spec is JSON the record never decodes: its callbacks show as '"cb":{' / '"fc":{' (a payload
# holding that text makes a job that finds no callback and ends).
CALLBACKS = """
local function schedule_callback(id, t, status, now, ahead)
  if t.oi ~= '' or t.p == '' then return end
  local mark = '"fc":{'
  if status == 'succeeded' then mark = '"cb":{' end
  if not string.find(t.p, mark, 1, true) then return end
  local job = id .. '.cb' .. t.g .. '.1'
  enqueue(job, 'cb', id .. '|' .. t.g .. '|' .. status .. '|1', now, now)
  t.cj = job
  wake(now, now, ahead)
end
"""

# ARGV: id, job, attempt_json|'', now, next_job|'', next_arg, next_due, wake_ms. Records one delivery
# of a callback and schedules the next one ('' when delivered or given up), if the job is still
# the task's callback job (a repeat, or a worker that lost the job to a reaper, records nothing).
# Returns 1 when recorded, else 0.
CALLBACK_DONE = (
    """
local id, job, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local t = load(id)
drop_job(job)
if not t or t.cj ~= job then return 0 end
if ARGV[3] ~= '' then redis.call('RPUSH', tkey(id) .. '"""
    + c.CALLBACK_ATTEMPTS
    + """', ARGV[3]) end
t.cj = nil
if ARGV[5] ~= '' then
  local due = tonumber(ARGV[7])
  enqueue(ARGV[5], 'cb', ARGV[6], due, now)
  t.cj = ARGV[5]
  wake(due, now, tonumber(ARGV[8]))
end
save(id, t)
publish(t.o, 'task', id, t.s)
return 1
"""
)


# -- GET /v1/tasks?name= and ?queue=default (issues #12, #19) ------------------------------------
# ARGV: index prefix ('i:<owner>:'), cursor|'', limit, name prefix|'', '1' to keep only tasks of
# the default queue|'', budget, then statuses. As LIST_IDS, but only the tasks that pass those
# filters, found by reading the owner's newest records below the cursor, at most budget of them
# (no index: a named task costs no more memory than another; the budget is what bounds the
# request's Redis time, see constants.LIST_SCAN_BUDGET). Returns {ids, stop, read}: up to limit + 1
# matching ids, newest first; when the budget ran out first, the last id read ('' otherwise: ids
# below it are unread); and how many records it read.
LIST_SCAN = """
local ix, cursor, limit, want = P .. ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local default_only, budget = ARGV[5] == '1', tonumber(ARGV[6])
local top = '+'
if cursor ~= '' then top = '(' .. cursor end
local all = {}
for i = 7, #ARGV do
  local ids = redis.call('ZREVRANGEBYLEX', ix .. ARGV[i], top, '-', 'LIMIT', 0, budget + 1)
  for _, id in ipairs(ids) do all[#all + 1] = id end
end
table.sort(all, function(a, b) return a > b end)
local out, last = {}, ''
for i = 1, math.min(#all, budget) do
  local id = all[i]
  local t = load(id)
  if t and string.sub(t.n, 1, #want) == want and (not default_only or t.q == '') then
    out[#out + 1] = id
    if #out > limit then return {out, '', i} end
  end
  last = id
end
if #all > budget then return {out, last, budget} end
return {out, '', #all}
"""

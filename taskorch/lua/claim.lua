-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: horizon_ms, now_ms, lease_ms, worker_id, limit, claim id, the id of this worker's last
-- claim whose reply it got ('' for none: its record is no longer needed), then the ids of its
-- earlier claims whose replies it never got.
-- Moves this partition's due jobs from its queue to its leases set, owned by this worker, and
-- returns for each {job, due, function, argument, url, spec, base, owner[, scheduled[, orc]]} (a
-- task's url, spec, attempts made before its last redrive and owner; '', '', 0, '' for other
-- jobs; scheduled, for a task, is the time it was due for this attempt: a named queue's task
-- goes later than that, at its dispatch slot, and a task a reaper took back from a dead worker
-- is in the queue from when it was taken back; orc, for an orchestration's step or fallback
-- task, its orchestration, whose step output the worker keeps: issue #21). A task's job that is
-- no longer the task's current one is dropped.
--
-- Issue #19: a claim is safe to lose. A claim whose reply was lost (a Redis frozen past the
-- worker's socket timeout runs the script when it resumes) leaves its jobs in this worker's
-- leases without the worker knowing; they would wait a whole lease. So each claim records what it
-- claimed under its claim id (cr:<id>, for as long as a lease) and the worker names the claims it
-- gave up on in its next claim, which adopts whatever of theirs is still leased to it. A claim
-- that has not run yet when a later one names it finds a tombstone there and claims nothing
-- (Redis may run them in either order), and a claim sent twice answers its first result again.
--
-- Queues (issue #12): a due task of a named queue that is limited (a rate, a concurrency cap,
-- paused) or has tasks waiting goes into the queue's line (qw) instead; then each queue whose
-- turn has come (qr) admits its first waiting tasks in due order, each at its dispatch slot
-- (rate: the next free slot, 1000 / rate ms after the last) while it has room (cap: run, the
-- admitted tasks, below max_concurrent), as far as the claim's horizon. Default tasks pass as
-- before.
--- @include "prelude"
--- @include "lease_clock"

local horizon, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[5])
local now = clock()
local out = {}
local CR, cid, worker = P .. '${CLAIM_RECORD}', ARGV[6] or '', ARGV[4]
local seen = {}
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
          row = {job, due, 'fire_task', id, t.h, t.p, t.b or 0, t.o,
            int(math.min(t.r, tonumber(due))), t.oi ~= '' and t.oi or nil}
        end
      else
        local data = redis.call('GET', P .. '${JOB}' .. job)
        if data then
          local d = cjson.decode(data)
          row = {job, due, d.f, d.a[1], '', '', 0, ''}
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
  if mine == '' then return {} end  -- a later claim gave up on this one first: claim nothing
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
local gates, lines, held = {}, {}, 0
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
    local fn, arg, url, spec, base, owner, sched, oi = nil, nil, '', '', 0, '', nil, nil
    if is_task_job(job) then
      local id = task_of_job(job)
      local t = id and load(id)
      if t and job_of(id, t) == job then
        if t.q ~= '' and not t.qa and gated(t) then
          redis.call('ZADD', qwait(t.o, t.q), due, job)
          lines[t.o .. ':' .. t.q] = {t.o, t.q}
          held_now = held_now + 1
        else
          fn, arg, url, spec = 'fire_task', id, t.h, t.p
          base, owner = t.b or 0, t.o  -- #12: attempts before a redrive; the owner signs the call
          sched = int(math.min(t.r, due))  -- #19: its own due time, not when a reaper put it back
          if t.oi ~= '' then oi = t.oi end  -- #21: a step's output is kept
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
      out[#out + 1] = {job, items[i + 1], fn, arg, url, spec, base, owner, sched, oi}
    end
  end
  held = held + held_now
until held_now == 0 or #out >= limit or held >= ${QUEUE_DIVERT_MAX}
for _, line in pairs(lines) do queue_kick(line[1], line[2], now, nil) end
local ready = redis.call('ZRANGEBYSCORE', QREADY, '-inf', horizon, 'LIMIT', 0,
  ${QUEUE_PUMP_QUEUES})
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
      out[#out + 1] = {job, int(at), 'fire_task', id, t.h, t.p, t.b or 0, t.o, int(t.r)}
    end
  end
  local qc = qkey('${QUEUE_CONF}', owner, q)
  if admitted > 0 then redis.call('HINCRBY', qc, 'run', admitted) end
  if interval and nxt ~= cf.next then redis.call('HSET', qc, 'next', string.format('%.3f', nxt)) end
  queue_kick(owner, q, now, nil)
end
if cid ~= '' and #out > 0 then
  local flat = {}
  for _, row in ipairs(out) do flat[#flat + 1] = row[1]; flat[#flat + 1] = row[2] end
  redis.call('SET', CR .. cid, cjson.encode(flat), 'PX', lease)
end
return out

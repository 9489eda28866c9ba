-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: wake_ms, then rows, each its field count and then: id, job, outcome
--       (succeeded|failed|retry), attempt_json, next_due, now, metric fields... ("name" or
--       "name=x" for the partition's metrics hash; "~<ms>", the attempt's lateness, counted in
--       the owner's hash for the minute, constants.LATENESS_BY_MINUTE; "!<json>", an
--       orchestration step's output, kept with its final outcome in o:<orc>:out)
-- Returns per row 1 when recorded, 0 when the attempt no longer owned the task (its lease lapsed
-- and another worker recovered it).
--- @include "prelude"
--- @include "callbacks"

local ahead = tonumber(ARGV[1])
local function finish(a)
  local id, job, outcome, now = a[1], a[2], a[3], tonumber(a[6])
  local lat = nil  -- "~<ms>": the attempt's lateness for the owner's by-minute figures
  local output = nil  -- "!<json>": a step's output (issue #21)
  for i = 7, #a do
    local head = string.sub(a[i], 1, 1)
    if head == '!' then output = string.sub(a[i], 2)
    elseif head == '~' then lat = string.sub(a[i], 2)
    else
      local f, by = string.match(a[i], '^(.+)=(.+)$')  -- "name=x" adds x, a bare name adds 1
      if f then incr(P .. 'm', f, by, true) else incr(P .. 'm', a[i], 1) end
    end
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
    local lk = P .. '${LATENESS_BY_MINUTE}' .. t.o .. ':' .. math.floor(now / 60000)
    incr(lk, lat, 1)
    if ACC then ACC.exp[lk] = ${LATENESS_TTL_S} else redis.call('EXPIRE', lk, ${LATENESS_TTL_S}) end
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
    schedule_callback(id, t, status, now, ahead)  -- issue #12 (lua/lib/callbacks.lua)
    save(id, t)
    finished('t', id, now)
    if t.oi ~= '' then
      if output then  -- the current step's output, recorded with its outcome (not a fallback's)
        local ok = P .. '${ORCH}' .. t.oi
        local cur = redis.call('HGET', ok, 'current_step')
        if cur and redis.call('HGET', ok .. ':state', 't' .. cur) == id then
          redis.call('HSET', ok .. ':out', cur, output)
        end
      end
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

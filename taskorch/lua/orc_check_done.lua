-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, step, attempt, passed (1/0), attempt_json, now, next_task_id, fallback_task_id,
--       wake_ms, then the step a passed check goes to ('': the next; a goto names another) and
--       what the step machine resolved for it and the fallback: spec|'', error|'',
--       fallback|''|'-' (see start_step and run_fallback in lib/orchestration.lua).
-- Returns 'next', 'recheck', 'stopped' (what became of the orchestration), the error's code when
-- the next step could not start ('reference_missing', 'step_limit'...) or 'stale' (not this
-- check).
--- @include "prelude"
--- @include "orchestration"

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
  local j = i + 1
  if ARGV[10] and ARGV[10] ~= '' then j = tonumber(ARGV[10]) end
  return start_step(id, o[5], j, ARGV[7], now, ahead, ARGV[11], ARGV[12], ARGV[13] or '', ARGV[8])
end
local cond = cjson.decode(condition_for(id, i, o[6]))
if n <= (tonumber(cond.retries) or 0) then
  -- never sooner than constants.MIN_RETRY_DELAY_S, as a task's retries
  local wait = math.max(${MIN_RETRY_DELAY_MS}, math.floor((tonumber(cond.retry_delay) or 1) * 1000))
  schedule_check(id, i, n + 1, now + wait, now, ahead)
  publish(o[5], 'orchestration', id, 'running')
  return 'recheck'
end
redis.call('HSET', key .. ':state', 'c' .. i, 'failed')
finish_orc(id, o[5], 'running', 'stopped', now)
run_fallback(id, o[5], fallback_of(id, ARGV[13] or ''), ARGV[8], now, ahead)
return 'stopped'

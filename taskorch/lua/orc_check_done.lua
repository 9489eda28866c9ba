-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, step, attempt, passed (1/0), attempt_json, now, next_task_id, fallback_task_id, wake_ms
-- Returns 'next', 'recheck', 'stopped' (what became of the orchestration) or 'stale' (not this check).
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
  start_step(id, o[5], i + 1, ARGV[7], now, ahead)
  return 'next'
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
run_fallback(id, o[5], o[7], ARGV[8], now, ahead)
return 'stopped'

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, task_id, task_status, now, next_task_id, fallback_task_id, wake_ms, step, then what
--       the step machine resolved for the next step and the fallback: spec|'', error|'',
--       fallback|''|'-' (see start_step and run_fallback in lib/orchestration.lua).
-- A step's (or the fallback's) task ended.
-- Returns what follows: 'next', 'check', 'succeeded', 'failed', 'fallback', or 'stale' (not the
-- current step's task), or the error's code when the next step could not start
-- ('reference_missing', 'step_limit'...).
--- @include "prelude"
--- @include "orchestration"

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
if ARGV[8] and ARGV[8] ~= '' and tonumber(ARGV[8]) ~= i then return 'stale' end
redis.call('HSET', key .. ':state', 's' .. i, tstatus, 'ft' .. i, now)
if tstatus ~= 'succeeded' then
  finish_orc(id, o[4], 'running', 'failed', now)
  run_fallback(id, o[4], fallback_of(id, ARGV[11] or ''), ARGV[6], now, ahead)
  return 'failed'
end
return step_succeeded(id, o[4], i, tonumber(o[5]), o[6], now, ahead, ARGV[5], ARGV[9],
  ARGV[10], ARGV[11] or '', ARGV[6])

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, step, run (the steps_run count its sleep began at), now, next_task_id,
--       fallback_task_id, wake_ms, then what the step machine resolved for the next step and the
--       fallback: spec|'', error|'', fallback|''|'-'. A sleep step's time is up: it succeeds
--       (output null) and the orchestration goes on as after a step task's success.
-- Returns as orc_step_done.lua does, or 'stale' (not this sleep: a replay, a cancel, a retry).
--- @include "prelude"
--- @include "orchestration"

local id, i, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'phase', 'current_step', 'steps_run', 'owner', 'n',
  'condition')
if o[1] ~= 'waiting' or o[2] ~= 'sleep' or tonumber(o[3]) ~= i or o[4] ~= ARGV[3] then
  return 'stale'
end
redis.call('HSET', key, 'status', 'running', 'phase', 'step', 'job', '', 'updated_at', now)
move_orc(o[5], id, 'waiting', 'running')
redis.call('HSET', key .. ':state', 's' .. i, 'succeeded', 'ft' .. i, now)
return step_succeeded(id, o[5], i, tonumber(o[6]), o[7], now, tonumber(ARGV[7]), ARGV[5], ARGV[8],
  ARGV[9], ARGV[10] or '', ARGV[6])

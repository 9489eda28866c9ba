-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, gen, now, first_task_id, wake_ms, step, spec|'', error|'', fallback|''|'-',
--       fallback_task_id. The start event: run step 0, or (a retry, orc_retry.lua) the step that
--       ended the run. spec, error and fallback are what the step machine resolved (see
--       start_step and run_fallback in lib/orchestration.lua).
-- Returns 1 when started, else 0 (a stale or repeated event).
--- @include "prelude"
--- @include "orchestration"

local id, now, i = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[6] or 0)
local o = redis.call('HMGET', okey(id), 'status', 'gen', 'owner', 'phase', 'current_step')
if o[2] ~= ARGV[2] then return 0 end
if o[1] == 'scheduled' and i == 0 then
  redis.call('HSET', okey(id), 'status', 'running')
  move_orc(o[3], id, 'scheduled', 'running')
elseif o[1] ~= 'running' or o[4] ~= 'retry' or tonumber(o[5]) ~= i then
  return 0
end
start_step(id, o[3], i, ARGV[4], now, tonumber(ARGV[5]), ARGV[7], ARGV[8], ARGV[9] or '',
  ARGV[10])
return 1

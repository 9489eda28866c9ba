-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now, wake_ms. Runs a failed or stopped orchestration again from the step that
-- ended it, the outputs of the steps before kept: a failed one's step is started again by a start
-- job (the step machine resolves its references first), a stopped one's check is run again. The
-- generation moves on, so that a job of the run before finds it stale. max_steps_run counts
-- afresh. Returns as orc_cancel.lua does.
--- @include "prelude"
--- @include "orchestration"

local id, owner, now, ahead = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'owner', 'gen', 'current_step')
if not o[2] or o[2] ~= owner then return {'not_found'} end
if o[1] ~= 'failed' and o[1] ~= 'stopped' then return {'conflict', o[1]} end
local i, gen = tonumber(o[4]), tonumber(o[3]) + 1
redis.call('ZREM', P .. '${FINISHED}', 'o:' .. id)  -- running again: not the retention's
redis.call('HDEL', key, 'finished_at')
redis.call('HSET', key, 'status', 'running', 'gen', gen, 'error', '', 'steps_run', 0,
  'fallback_task', '', 'fallback_status', '', 'updated_at', now)
move_orc(owner, id, o[1], 'running')
if o[1] == 'stopped' then
  redis.call('DEL', key .. ':check:' .. i)
  redis.call('HSET', key, 'phase', 'check', 'check_n', 0)
  schedule_check(id, i, 1, now, now, ahead)
else
  local job = id .. '.r' .. gen
  redis.call('HDEL', key .. ':state', 's' .. i, 'e' .. i, 'ft' .. i)
  redis.call('HSET', key, 'phase', 'retry', 'job', job)
  enqueue(job, 'orc', 'start|' .. id .. '|' .. gen .. '|' .. i, now, now)
  wake(now, now, ahead)
end
publish(owner, 'orchestration', id, 'running')
local view = orc_view(id)
return {'ok', unpack(view)}

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, gen, now, first_task_id, wake_ms. The start event: run step 0.
-- Returns 1 when started, else 0 (a stale or repeated event).
--- @include "prelude"
--- @include "orchestration"

local id, now = ARGV[1], tonumber(ARGV[3])
local o = redis.call('HMGET', okey(id), 'status', 'gen', 'owner')
if o[1] ~= 'scheduled' or o[2] ~= ARGV[2] then return 0 end
redis.call('HSET', okey(id), 'status', 'running')
move_orc(o[3], id, 'scheduled', 'running')
start_step(id, o[3], 0, ARGV[4], now, tonumber(ARGV[5]))
return 1

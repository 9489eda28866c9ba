-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now, wake_ms. A failed task is scheduled again now with a fresh retry budget:
-- b (the attempts made before) lets the worker count its retries from there, while attempt
-- numbers go on; l (lost attempts) starts over; a callback of the earlier outcome not yet
-- delivered is dropped (its Task is no longer final). Returns as cancel_task.lua does.
--- @include "prelude"

local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'failed' then return {'conflict', t.s} end
if t.cj then drop_job(t.cj); t.cj = nil end
t.b = t.a; t.l = 0; t.g = t.g + 1; t.r = now; t.u = now; t.ft = nil; t.s = 'scheduled'
save(id, t)
redis.call('ZREM', P .. '${FINISHED}', 't:' .. id)  -- no longer finished: retention must not delete it
move_task(owner, id, 'failed', 'scheduled', t.q)
redis.call('ZADD', QUEUE, now, id .. '.' .. t.g)
publish(owner, 'task', id, 'scheduled')
wake(now, now, tonumber(ARGV[4]))
local view = task_view(id)
return {'ok', view[1], view[2]}

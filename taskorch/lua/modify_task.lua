-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now, expected_gen, url, spec, name, due, wake_ms. Returns {'ok', view, attempts}
-- | {'not_found'} | {'conflict', status} | {'in_orchestration', id} | {'stale'} (re-read, retry)
--- @include "prelude"

local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'scheduled' and t.s ~= 'retrying' then return {'conflict', t.s} end
if int(t.g) ~= ARGV[4] then return {'stale'} end
drop_job(job_of(id, t))
queue_leave(t, job_of(id, t), now)
local due = tonumber(ARGV[8])
t.g = t.g + 1; t.h = ARGV[5]; t.p = ARGV[6]; t.n = ARGV[7]; t.r = due; t.u = now
save(id, t)
redis.call('ZADD', QUEUE, due, id .. '.' .. t.g)
publish(owner, 'task', id, t.s)
wake(due, now, tonumber(ARGV[9]))
local view = task_view(id)
return {'ok', view[1], view[2]}

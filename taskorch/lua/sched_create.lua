-- KEYS: queue, sc:<id>, sz. ARGV: id, owner, now, bound, status (active, or ended when no run
-- time is left), idempotency key (its full name, '' for none), its ttl, then field/value pairs.
-- Returns {created (1/0), id, sched_view's {hash, last task id}}: a repeat of the key answers
-- the schedule created under it.
--- @include "prelude"
--- @include "schedule"

local id, owner, now, status = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local existing = idempotent(ARGV[6], id, ARGV[7], P .. '${SCHEDULE}')
if existing then return {0, existing, sched_view(existing, ARGV[4])} end
-- made until just before now: a grid that starts now (every, without start_at) runs at once
redis.call('HSET', KEYS[2], 'o', owner, 's', status, 'v', 1, 'c', now, 'u', now, 'mu', now - 1)
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
move_sched(owner, id, nil, status)
if status == 'active' then redis.call('ZADD', KEYS[3], now, id) end
publish(owner, 'schedule', id, status)
return {1, id, sched_view(id, ARGV[4])}

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: expiry_ms, then pairs job, due. Pushes held claims' leases forward; a lease that has
-- already lapsed and been recovered is not revived (XX).
-- Returns 0.
--- @include "prelude"
--- @include "lease_clock"

local now, expiry = clock(), tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', LEASES, 'XX', math.max(tonumber(ARGV[i + 1]), now) + expiry, ARGV[i])
end
return 0

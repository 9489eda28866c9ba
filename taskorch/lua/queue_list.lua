-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: owner, statuses... Returns {the owner's task counts by status in this partition (every
-- queue's), {name, view} per named queue of the owner in this partition, the settings of a
-- queue never set (the default queue's)}.
--- @include "prelude"
--- @include "queue"

local owner, statuses = ARGV[1], {unpack(ARGV, 2)}
local totals = {}
for i, s in ipairs(statuses) do
  totals[i] = redis.call('ZCARD', P .. '${TASK_INDEX}' .. owner .. ':' .. s)
end
local queues = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. '${QUEUE_NAMES}' .. owner)) do
  queues[#queues + 1] = {q, queue_view(owner, q, statuses)}
end
return {totals, queues, queue_settings({})}

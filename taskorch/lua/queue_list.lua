-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: owner, statuses... Returns {the owner's task counts by status in this partition (every
-- queue's), {name, view} per named queue of the owner in this partition}.
--- @include "prelude"
--- @include "queue"

local owner = ARGV[1]
local totals = {}
for i = 2, #ARGV do
  totals[#totals + 1] = redis.call('ZCARD', P .. '${TASK_INDEX}' .. owner .. ':' .. ARGV[i])
end
local queues = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. '${QUEUE_NAMES}' .. owner)) do
  queues[#queues + 1] = {q, queue_view(owner, q, 2)}
end
return {totals, queues}

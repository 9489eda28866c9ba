-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: owner, queue, statuses... Returns the queue's view, or {} when the owner has no such
-- queue (never set, no task ever named it).
--- @include "prelude"
--- @include "queue"

if redis.call('SISMEMBER', P .. '${QUEUE_NAMES}' .. ARGV[1], ARGV[2]) == 0 then return {} end
return queue_view(ARGV[1], ARGV[2], {unpack(ARGV, 3)})

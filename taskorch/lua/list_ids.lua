-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: index prefix ('i:<owner>:' or 'oi:<owner>:'), cursor|'', limit, then statuses.
-- One newest-first page of ids of this partition merged over the statuses' indexes: up to
-- limit + 1 ids below the cursor (ids sort by creation time; the cursor is the last id handed out).
-- Returns the ids, newest first.
--- @include "prelude"
--- @include "newest_ids"

local limit = tonumber(ARGV[3])
local all = newest_ids(P .. ARGV[1], ARGV[2], limit + 1, 4)
local out = {}
for i = 1, math.min(#all, limit + 1) do out[i] = all[i] end
return out

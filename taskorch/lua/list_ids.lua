-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: index prefix ('i:<owner>:' or 'oi:<owner>:'), cursor|'', limit, then statuses.
-- One newest-first page of ids of this partition merged over the statuses' indexes: up to
-- limit + 1 ids below the cursor (ids sort by creation time; the cursor is the last id handed out).
-- Returns the ids, newest first.
--- @include "prelude"

local ix, cursor, limit = P .. ARGV[1], ARGV[2], tonumber(ARGV[3])
local top = '+'
if cursor ~= '' then top = '(' .. cursor end
local all = {}
for i = 4, #ARGV do
  local ids = redis.call('ZREVRANGEBYLEX', ix .. ARGV[i], top, '-', 'LIMIT', 0, limit + 1)
  for _, id in ipairs(ids) do all[#all + 1] = id end
end
table.sort(all, function(a, b) return a > b end)
local out = {}
for i = 1, math.min(#all, limit + 1) do out[i] = all[i] end
return out

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: bound, then ids. Returns per id sched_view's {hash, last task id} ({{}, ''} for none).
--- @include "prelude"
--- @include "schedule"

local out = {}
for i = 2, #ARGV do out[#out + 1] = sched_view(ARGV[i], ARGV[1]) end
return out

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: task ids. Returns per id {task view, attempts} ({{}, {}} where there is none).
--- @include "prelude"

local out = {}
for i = 1, #ARGV do out[i] = task_view(ARGV[i]) end
return out

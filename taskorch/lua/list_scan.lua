-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: index prefix ('i:<owner>:'), cursor|'', limit, name prefix|'', '1' to keep only tasks of
-- the default queue|'', budget, then statuses. As list_ids.lua, but only the tasks that pass those
-- filters, found by reading the owner's newest records below the cursor, at most budget of them
-- (no index: a named task costs no more memory than another; the budget is what bounds the
-- request's Redis time, see constants.LIST_SCAN_BUDGET). Returns {ids, stop, read}: up to limit + 1
-- matching ids, newest first; when the budget ran out first, the last id read ('' otherwise: ids
-- below it are unread); and how many records it read.
--- @include "prelude"
--- @include "newest_ids"

local limit, want = tonumber(ARGV[3]), ARGV[4]
local default_only, budget = ARGV[5] == '1', tonumber(ARGV[6])
local all = newest_ids(P .. ARGV[1], ARGV[2], budget + 1, 7)
local out, last = {}, ''
for i = 1, math.min(#all, budget) do
  local id = all[i]
  local t = load(id)
  if t and string.sub(t.n, 1, #want) == want and (not default_only or t.q == '') then
    out[#out + 1] = id
    if #out > limit then return {out, '', i} end
  end
  last = id
end
if #all > budget then return {out, last, budget} end
return {out, '', #all}

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: owner, schedule id, cursor|'', limit, status|'', budget, name prefix|''. One newest-first
-- page (up to limit + 1) of the tasks a schedule made, below the cursor, of that status and name
-- when given: {ids, the last id read when a filter had read budget records without filling the
-- page, else ''} (as list_scan.lua: the budget bounds the request's Redis time).
-- Returns {ids, the last id read or ''} as above.
--- @include "prelude"
--- @include "schedule"

local key = made_key(ARGV[1], ARGV[2])
local top = '+'
if ARGV[3] ~= '' then top = '(' .. ARGV[3] end
local limit, want, budget, name = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
if want == '' and name == '' then
  return {redis.call('ZREVRANGEBYLEX', key, top, '-', 'LIMIT', 0, limit + 1), ''}
end
local ids = redis.call('ZREVRANGEBYLEX', key, top, '-', 'LIMIT', 0, budget + 1)
local out, last = {}, ''
for i = 1, math.min(#ids, budget) do
  local t = load(ids[i])
  if t and (want == '' or t.s == want) and string.sub(t.n, 1, #name) == name then
    out[#out + 1] = ids[i]
    if #out > limit then return {out, ''} end
  end
  last = ids[i]
end
if #ids > budget then return {out, last} end
return {out, ''}

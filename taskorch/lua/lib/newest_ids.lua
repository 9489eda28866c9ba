-- The newest ids of a partition's index of one owner, merged over statuses: up to n ids of each
-- status's index below the cursor ('' for the top), newest first (ids sort by creation time).
-- ix: the index prefix with P (P .. 'i:<owner>:'); ARGV[from..] the statuses.

local function newest_ids(ix, cursor, n, from)
  local top = '+'
  if cursor ~= '' then top = '(' .. cursor end
  local all = {}
  for i = from, #ARGV do
    local ids = redis.call('ZREVRANGEBYLEX', ix .. ARGV[i], top, '-', 'LIMIT', 0, n)
    for _, id in ipairs(ids) do all[#all + 1] = id end
  end
  table.sort(all, function(a, b) return a > b end)
  return all
end

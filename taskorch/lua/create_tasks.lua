-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: now, idem_ttl_s, wake_ms, deadline_ms|'', partitions, this partition, then per task 8
--       fields: id, owner, url, spec (the rest of it, '' when all defaults), name, due,
--       idempotency key (the full key name in this partition, '' for none), queue ('' default).
-- Returns per task {1} (created as given: the caller knows its view without a reply to build and
-- parse, a batch's largest cost), {0, task view, attempts} (a repeat of a key, even within the
-- batch: the task created under it) or {2, id} (a migrated key naming a record in another
-- partition: see idempotent), or {-1} past the deadline (nothing written).
--- @include "prelude"
--- @include "past_deadline"

if past_deadline(ARGV[4]) then return {-1} end
local now, ttl, ahead = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
batching()
for i = 7, #ARGV, 8 do
  local id, owner = ARGV[i], ARGV[i + 1]
  local existing, elsewhere = idempotent(ARGV[i + 6], id, ttl, P .. 't:', ARGV[5], ARGV[6])
  if elsewhere then
    out[#out + 1] = {2, existing}
  elseif existing then
    local view = task_view(existing)
    out[#out + 1] = {0, view[1], view[2]}
  else
    new_task(id, owner, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), now, '',
      ahead, ARGV[i + 7])
    out[#out + 1] = {1}
  end
end
flush()
return out

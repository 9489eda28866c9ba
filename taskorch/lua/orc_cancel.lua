-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now. Cancels the pending start, check or wake job and a step task not yet called.
-- Returns as orc_modify.lua does.
--- @include "prelude"
--- @include "orchestration"

local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'owner', 'job', 'phase', 'current_step')
if not o[2] or o[2] ~= owner then return {'not_found'} end
if o[1] ~= 'scheduled' and o[1] ~= 'running' and o[1] ~= 'waiting' then
  return {'conflict', o[1]}
end
drop_job(o[3])
if o[4] == 'step' then
  local tid = redis.call('HGET', key .. ':state', 't' .. o[5])
  if tid then
    if cancel_task(tid, now) == 'cancelled' then
      redis.call('HSET', key .. ':state', 's' .. o[5], 'cancelled')
    end
  end
end
finish_orc(id, owner, o[1], 'cancelled', now)
local view = orc_view(id)
return {'ok', unpack(view)}

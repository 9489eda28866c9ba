-- KEYS: queue, sc:<id>, sz. ARGV: op (patch|pause|resume|delete), id, owner, now, bound,
-- expected version ('' for any), then (patch) field/value pairs.
-- Returns {'ok', view} | {'deleted'} | {'not_found'} | {'conflict', status} | {'stale'}.
-- Pause cancels every occurrence made but not started; a change cancels those due after now and
-- has the new definition made from now on; resume makes from now on (a pause is not downtime:
-- nothing missed while paused is caught up); delete cancels like pause and removes the schedule
-- (its tasks stay, with their schedule_id, until retention deletes them).
--- @include "prelude"
--- @include "schedule"

local op, id, owner, now, bound = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local key = KEYS[2]
local s = redis.call('HMGET', key, 'o', 's', 'v')
if not s[1] or s[1] ~= owner then return {'not_found'} end
if ARGV[6] ~= '' and s[3] ~= ARGV[6] then return {'stale'} end
local status, v = s[2], tonumber(s[3]) + 1
if op == 'delete' then
  cancel_made(owner, id, now, true)
  if redis.call('EXISTS', made_key(owner, id)) == 1 then  -- for the janitor (lua/purge.lua)
    redis.call('ZADD', P .. '${SCHEDULES_DELETED_TRIM}', now, id .. ':' .. owner)
    redis.call('ZADD', P .. '${SCHEDULES_DELETED}', now, id .. ':' .. owner)
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', P .. '${SCHEDULE_INDEX}' .. owner .. ':' .. status, id)
  redis.call('HINCRBY', P .. '${STATS}', 'schedules:' .. status, -1)
  publish(owner, 'schedule', id, 'deleted')
  return {'deleted'}
end
if status == 'ended' then return {'conflict', status} end
local new = status
if op == 'pause' then
  if status == 'active' then
    cancel_made(owner, id, now, true)
    redis.call('ZREM', KEYS[3], id)
    new = 'paused'
  end
elseif op == 'resume' then
  if status == 'paused' then
    redis.call('HSET', key, 'mu', now)
    redis.call('ZADD', KEYS[3], now, id)
    new = 'active'
  end
else
  for i = 7, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  if status == 'active' then
    redis.call('HSET', key, 'mu', cancel_made(owner, id, now, false))
    redis.call('ZADD', KEYS[3], now, id)
  end
end
if new ~= status or op == 'patch' then
  redis.call('HSET', key, 's', new, 'v', v, 'u', now)
  move_sched(owner, id, status, new)
  publish(owner, 'schedule', id, new)
end
return {'ok', sched_view(id, bound)}

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: cutoff_ms, limit. Deletes this partition's records that finished before the cutoff (the
-- retention janitor): a task with its attempts, or an orchestration with its steps' hashes and
-- checks, and their index entries. Step and fallback tasks are tasks and expire on their own.
-- Returns how many records it deleted.
--- @include "prelude"
--- @include "orchestration"

local function drop_task(id, t)
  redis.call('ZREM', P .. 'i:' .. t.o .. ':' .. t.s, id)
  if t.sc ~= '' then redis.call('ZREM', P .. 'iS:' .. t.o .. ':' .. t.sc, id) end  -- sched
  if t.q ~= '' then redis.call('ZREM', P .. 'iq:' .. t.o .. ':' .. t.q .. ':' .. t.s, id) end
  redis.call('HINCRBY', P .. 's', 'tasks:' .. t.s, -1)
  redis.call('DEL', tkey(id), tkey(id) .. ':a', tkey(id) .. ':cb')  -- :cb callback attempts
end
local items = redis.call('ZRANGEBYSCORE', P .. 'f', '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(items) do
  redis.call('ZREM', P .. 'f', member)
  local kind, id = string.sub(member, 1, 1), string.sub(member, 3)
  if kind == 't' then
    local t = load(id)
    if t then drop_task(id, t) end
  else
    local key = okey(id)
    local o = redis.call('HMGET', key, 'owner', 'status', 'n')
    if o[1] then
      redis.call('ZREM', P .. 'oi:' .. o[1] .. ':' .. o[2], id)
      redis.call('HINCRBY', P .. 's', 'orchestrations:' .. o[2], -1)
      for i = 0, tonumber(o[3]) - 1 do redis.call('DEL', key .. ':check:' .. i) end
      redis.call('DEL', key, key .. ':specs', key .. ':conds', key .. ':state', key .. ':names',
        key .. ':out', key .. ':kinds')
    end
  end
end
local done = #items
if not ARGV[3] then return done end
-- Deleted schedules (constants.SCHEDULES_DELETED), ARGV: now, the cutoff for all of them, keep.
-- The oldest occurrences beyond the newest ``keep`` go now (sdt), the rest once their
-- schedule was deleted before the cutoff (sd). Finished ones are deleted; any other only leaves
-- the schedule's list, and the retention deletes it once it finishes, like any task.
local budget = tonumber(ARGV[2]) - done
local function reap(zset, cutoff, keep)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', cutoff, 'LIMIT', 0, 10)) do
    if budget <= 0 then return end
    local sep = string.find(member, ':', 1, true)
    local made = P .. '${SCHEDULE_TASKS}' .. string.sub(member, sep + 1) .. ':' .. string.sub(member, 1, sep - 1)
    local n = math.min(budget, redis.call('ZCARD', made) - keep)
    if n > 0 then
      for _, tid in ipairs(redis.call('ZRANGE', made, 0, n - 1)) do
        local t = load(tid)
        if t and (t.s == 'succeeded' or t.s == 'failed' or t.s == 'cancelled') then
          redis.call('ZREM', P .. 'f', 't:' .. tid)
          drop_task(tid, t)
        end
        redis.call('ZREM', made, tid)
      end
      budget = budget - n
      done = done + n
    end
    if redis.call('ZCARD', made) <= keep then redis.call('ZREM', zset, member) end
  end
end
reap(P .. '${SCHEDULES_DELETED_TRIM}', ARGV[3], tonumber(ARGV[5]))
reap(P .. '${SCHEDULES_DELETED}', ARGV[4], 0)
return done

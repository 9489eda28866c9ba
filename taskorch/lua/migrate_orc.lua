-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: orchestration id, n moved steps, then n pairs (old task id, new task id), then the old
-- jobs of this orchestration (its start/check job and step-ended events) with their data
-- translated by the caller: triples (old job, new job, new data).
-- Returns 1 when moved, 0 when the old record is gone (moved already).
--- @include "prelude"
--- @include "orchestration"
--- @include "migrate_move"

local oid = ARGV[1]
local ok = OLDP .. 'orc:' .. oid
if redis.call('EXISTS', ok) == 0 then return 0 end
local n = tonumber(ARGV[2])
local map = {}
for i = 3, 2 + 2 * n, 2 do
  migrate_task(ARGV[i], ARGV[i + 1], oid)
  map[ARGV[i]] = ARGV[i + 1]
end
local key = okey(oid)
for _, suffix in ipairs({'', ':specs', ':conds', ':state'}) do
  if redis.call('EXISTS', ok .. suffix) == 1 then redis.call('RENAME', ok .. suffix, key .. suffix) end
end
local o = redis.call('HMGET', key, 'owner', 'status', 'n', 'fallback_task')
for i = 0, tonumber(o[3] or '0') - 1 do
  if redis.call('EXISTS', ok .. ':check:' .. i) == 1 then
    redis.call('RENAME', ok .. ':check:' .. i, key .. ':check:' .. i)
  end
end
local state = redis.call('HGETALL', key .. ':state')
for i = 1, #state, 2 do
  if map[state[i + 1]] then redis.call('HSET', key .. ':state', state[i], map[state[i + 1]]) end
end
if o[4] and map[o[4]] then redis.call('HSET', key, 'fallback_task', map[o[4]]) end
move_orc(o[1], oid, nil, o[2])
local fin = redis.call('ZSCORE', OLDP .. 'finished', 'o:' .. oid)
if fin then
  redis.call('ZADD', P .. 'f', fin, 'o:' .. oid)
  redis.call('ZREM', OLDP .. 'finished', 'o:' .. oid)
end
for i = 3 + 2 * n, #ARGV, 3 do
  local job, newjob = ARGV[i], ARGV[i + 1]
  local ttl = redis.call('PTTL', OLDP .. 'job:' .. job)
  if ttl > 0 then
    redis.call('SET', P .. 'j:' .. newjob, ARGV[i + 2], 'PX', ttl)
    old_job_moves(job, newjob)
  end
  redis.call('DEL', OLDP .. 'job:' .. job)
end
return 1

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now, expected_gen, name, due, condition, fallback, n (-1: steps unchanged),
--       wake_ms, then n specs, n conditions and n names ('' where a step has none). Returns as
--       modify_task.lua does, with orc_view's parts after 'ok'.
--- @include "prelude"
--- @include "orchestration"

local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = okey(id)
local o = redis.call('HMGET', key, 'status', 'owner', 'gen', 'job')
if not o[2] or o[2] ~= owner then return {'not_found'} end
if o[1] ~= 'scheduled' then return {'conflict', o[1]} end
if o[3] ~= ARGV[4] then return {'stale'} end
drop_job(o[4])
local gen = tonumber(o[3]) + 1
local due = tonumber(ARGV[6])
local n = tonumber(ARGV[9])
if n >= 0 then
  redis.call('DEL', key .. ':specs', key .. ':conds', key .. ':names', key .. ':kinds')
  for i = 1, n do
    redis.call('HSET', key .. ':specs', i - 1, ARGV[10 + i])
    if ARGV[10 + n + i] ~= '' then redis.call('HSET', key .. ':conds', i - 1, ARGV[10 + n + i]) end
    local name = ARGV[10 + 2 * n + i]
    if name and name ~= '' then redis.call('HSET', key .. ':names', name, i - 1) end
  end
  redis.call('HSET', key, 'n', n)
end
local job = id .. '.s' .. gen
redis.call('HSET', key, 'name', ARGV[5], 'run_at', due, 'condition', ARGV[7], 'fallback', ARGV[8],
  'gen', gen, 'job', job, 'updated_at', now)
enqueue(job, 'orc', 'start|' .. id .. '|' .. gen, due, now)
publish(owner, 'orchestration', id, 'scheduled')
wake(due, now, tonumber(ARGV[10]))
local view = orc_view(id)
return {'ok', unpack(view)}

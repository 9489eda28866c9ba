-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: owner, queue, now, rate, max_concurrent, paused, statuses... where a setting is '' to
-- keep it, 'null' to lift it, else its value (paused '0' or '1'). Returns the queue's view. A new
-- rate takes effect at once: a slot reserved under a slower one is brought forward. Whatever
-- the change, the queue's waiting tasks are looked at again (resumed, more room).
--- @include "prelude"
--- @include "queue"

local owner, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = qkey('${QUEUE_CONF}', owner, q)
local old_rate = tonumber(redis.call('HGET', key, 'rate'))
local function set(field, v)
  if v == 'null' then redis.call('HDEL', key, field)
  elseif v ~= '' then redis.call('HSET', key, field, v) end
end
set('rate', ARGV[4]); set('mc', ARGV[5]); set('paused', ARGV[6])
local rate = tonumber(redis.call('HGET', key, 'rate'))
if rate and rate ~= old_rate then
  local nxt = tonumber(redis.call('HGET', key, 'next')) or 0
  if nxt > now + 1000 / rate then
    redis.call('HSET', key, 'next', string.format('%.3f', now + 1000 / rate))
  end
end
redis.call('SADD', P .. '${QUEUE_NAMES}' .. owner, q)
queue_kick(owner, q, now, ${CLAIM_AHEAD_MS})
return queue_view(owner, q, 7)

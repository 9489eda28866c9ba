-- ARGV: a fresh secret, now_ms. The secrets, the first made now if there is none; a previous one
-- past its prev_until is dropped. Returns the hash (HGETALL).

local k, now = KEYS[1], tonumber(ARGV[2])
if redis.call('HEXISTS', k, 'cur') == 0 then
  redis.call('HSET', k, 'cur', ARGV[1], 'cur_at', ARGV[2])
end
local until_ms = tonumber(redis.call('HGET', k, 'prev_until') or '0')
if until_ms > 0 and until_ms <= now then redis.call('HDEL', k, 'prev', 'prev_at', 'prev_until') end
return redis.call('HGETALL', k)

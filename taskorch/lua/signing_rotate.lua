-- ARGV: a fresh secret, now_ms, overlap_ms. The fresh secret becomes the current one; the current
-- one signs too until now + overlap (one before it, if still signing, retires now). With no secret
-- yet, the fresh one is simply the first. Returns the hash (HGETALL).

local k, now = KEYS[1], tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'cur', 'cur_at')
if cur[1] then
  redis.call('HSET', k, 'prev', cur[1], 'prev_at', cur[2], 'prev_until',
    string.format('%d', now + tonumber(ARGV[3])))
end
redis.call('HSET', k, 'cur', ARGV[1], 'cur_at', ARGV[2])
return redis.call('HGETALL', k)

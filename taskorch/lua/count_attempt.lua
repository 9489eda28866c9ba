-- KEYS: the name's attempts hash; ARGV: the client address, the window in s. The window starts
-- with the name's first attempt from anywhere; returns {this address's attempts, seconds left}.

local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {n, redis.call('TTL', KEYS[1])}

-- KEYS: the address's failures counter; ARGV: 1 to count a failure, 0 to read; the window in s.
-- Returns {failures in the window, seconds left in it}.

if ARGV[1] == '1' then
  redis.call('SET', KEYS[1], 0, 'EX', ARGV[2], 'NX')
  redis.call('INCR', KEYS[1])
end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('TTL', KEYS[1])}

-- Leases are scored on Redis's own clock: a worker that computed "now" and ran its script seconds
-- later (a busy loop, a slow connect) must not hand Redis a lease that has already lapsed, and
-- workers on different hosts then agree on when one lapses.

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

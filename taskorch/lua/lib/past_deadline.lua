-- A create's deadline (Unix ms, '' for none): past it by Redis's clock the create writes nothing
-- and returns {-1}, because the API has answered 503 by then (a frozen Redis that resumes runs
-- what it had received). TIME before any write is allowed: scripts replicate their effects.

local function past_deadline(deadline)
  if not deadline or deadline == '' then return false end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline)
end

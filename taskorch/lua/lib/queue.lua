-- A named queue's settings and state are in its partition (see lib/prelude.lua's queue helpers); these
-- scripts serve the API's /v1/queues. Each takes the task statuses to count last in ARGV.
--- @include "prelude"

-- {settings {rate, mc, paused}, counts by status (ARGV from ``from`` on), waiting}
local function queue_view(owner, q, from)
  local counts = {}
  local ix = qkey('${QUEUE_INDEX}', owner, q) .. ':'
  for i = from, #ARGV do counts[#counts + 1] = redis.call('ZCARD', ix .. ARGV[i]) end
  return {redis.call('HMGET', qkey('${QUEUE_CONF}', owner, q), 'rate', 'mc', 'paused'), counts,
    redis.call('ZCARD', qwait(owner, q))}
end

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: now, limit, this maker's own last round here (Redis ms; '' when it cannot vouch that it
-- has been trying every second since). The makers' round in this partition: {down, schedules,
-- at, cut, from}: the schedules whose next occurrences are due to be made, each {id, hash};
-- down = 1 when every worker was down, so that what was missed follows each schedule's
-- catch_up, with the missed cut-off (when the downtime was seen, less SCHEDULE_LATE_MS) cut ms
-- ago and the last round before the downtime from ms ago; at, this round's time, for the maker
-- to name in its next round. Redis's clock, so that workers whose clocks differ agree.
--
-- Issue #19: a gap in the makers' rounds is not a downtime when the maker that looks was alive
-- through it (a Redis outage stops every round, not the workers): a maker that ran a round here
-- before the gap and has tried every second since says so, and nothing is caught up; the
-- missed times are made as late runs. A gap seen without that is a downtime, decided once for
-- SCHEDULE_DOWN_DECIDED_MS: every worker that comes back in that time makes its first round
-- with the same verdict and cut-off before it claims, so none of them fires an overdue
-- occurrence beside the catch-up.
-- Returns {down, schedules, at, cut, from} as above.
--- @include "prelude"
--- @include "schedule"
--- @include "lease_clock"

local now, at = tonumber(ARGV[1]), clock()
local mine = tonumber(ARGV[3] or '')
local M = P .. '${SCHEDULE_MAKERS}'
local r = redis.call('HMGET', M, 'last', 'down_at', 'down_cut', 'down_from')
local prev, down_at = tonumber(r[1] or ''), tonumber(r[2] or '')
local cut, from = tonumber(r[3] or ''), tonumber(r[4] or '')
if down_at and at - down_at > ${SCHEDULE_DOWN_DECIDED_MS} then down_at = nil end
local down = 0
if mine and (not down_at or mine < down_at) then
  down_at = nil  -- alive through the gap: no downtime (nor one another maker took for it)
elseif down_at then
  down = 1
elseif not prev or at - prev > ${SCHEDULE_LATE_MS} then
  down, down_at, cut, from = 1, at, at - ${SCHEDULE_LATE_MS}, prev or 0
  redis.call('HSET', M, 'down_at', at, 'down_cut', cut, 'down_from', from)
end
if not down_at then redis.call('HDEL', M, 'down_at', 'down_cut', 'down_from') end
redis.call('HSET', M, 'last', at)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', SZ, '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local h = redis.call('HGETALL', skey(id))
  if #h == 0 then redis.call('ZREM', SZ, id) else out[#out + 1] = {id, h} end
end
if down == 0 then return {0, out, at, 0, 0} end
return {1, out, at, at - cut, at - from}

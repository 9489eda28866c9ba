-- KEYS: queue, sc:<id>, sz. ARGV: id, expected version, now, made until, next look (ms, or ''
-- when the schedule has ended), wake_ms, catch-up ('' for none, else the missed cut-off ms and
-- the mode one|none|all), caught-up count (the first occurrences are missed times being caught
-- up), the downtime's start (ms: the last round before it), the schedule's queue ('' for
-- default), then per occurrence: task id, due, url, spec, name.
-- Returns how many tasks it made, or -1 when the schedule changed since it was read.
-- With a catch-up, occurrences made earlier and still not started at the cut-off were missed too:
-- "none" cancels them, "one" keeps the latest missed time only (a new one, or the latest of them),
-- "all" keeps them. For "one", an overdue occurrence that has started since the downtime began
-- (it raced this script) is that one late run: the others are cancelled and the caught-up
-- occurrence is not made (issue #19).
--- @include "prelude"
--- @include "schedule"

local id, now = ARGV[1], tonumber(ARGV[3])
local key = KEYS[2]
local s = redis.call('HMGET', key, 'o', 's', 'v')
if not s[1] or s[2] ~= 'active' or s[3] ~= ARGV[2] then return -1 end
local owner = s[1]
local made = made_key(owner, id)
local skip = 0  -- caught-up occurrences not to make: one already ran
if ARGV[7] ~= '' then
  local cut, mode, fresh = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
  local from = tonumber(ARGV[10]) + ${CLAIM_AHEAD_MS_TWICE}  -- started later than this: during the downtime
  if mode ~= 'all' then
    local off, waiting, started = 0, {}, false
    while off < ${SCHEDULE_CANCEL_SCAN} do
      local ids = redis.call('ZREVRANGEBYLEX', made, '+', '-', 'LIMIT', off, 100)
      if #ids == 0 then break end
      local stop = false
      for _, tid in ipairs(ids) do
        local t = load(tid)
        if not t then stop = true; break end
        if t.s == 'scheduled' and t.r <= cut then
          waiting[#waiting + 1] = tid
        elseif t.s ~= 'scheduled' and t.r <= cut then
          if t.r <= from then stop = true; break end
          if t.s ~= 'cancelled' then started = true end
        end
      end
      if stop then break end
      off = off + 100
    end
    local keep = mode == 'one' and fresh == 0 and not started
    if mode == 'one' and started then skip = fresh end
    for i, tid in ipairs(waiting) do
      if not (keep and i == 1) then cancel_task(tid, now) end
    end
  end
end
local ahead, n, q = tonumber(ARGV[6]), 0, ARGV[11]
for i = 12 + 5 * skip, #ARGV, 5 do
  local tid = ARGV[i]
  new_task(tid, owner, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 1]), now, '', ahead, q, id)
  redis.call('ZADD', made, 0, tid)
  n = n + 1
end
redis.call('HSET', key, 'mu', ARGV[4], 'v', tonumber(s[3]) + 1)
if ARGV[5] == '' then
  redis.call('HSET', key, 's', 'ended', 'u', now)
  redis.call('ZREM', KEYS[3], id)
  move_sched(owner, id, 'active', 'ended')
  publish(owner, 'schedule', id, 'ended')
else
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), id)
end
return n

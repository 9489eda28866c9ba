-- A schedule is a hash sc:<id> (o owner, s status, n name, cron, ev every ms, tz, task (its body,
-- JSON), sa start_at, ea end_at ('' none), cu catch_up, c/u created/updated, v version, mu "made
-- until": every run time up to it was made or skipped). Its occurrences are ordinary tasks with sc
-- set, listed in iS:<owner>:<id>. Every change bumps v; the makers compute the next occurrences in
-- Python and hand them to sched_make.lua with the version they read, so two makers with the same view
-- make them once (the second finds v moved on and makes nothing).
--- @include "prelude"

local SZ = P .. '${SCHEDULES_DUE}'
local function skey(id) return P .. '${SCHEDULE}' .. id end
local function made_key(owner, id) return P .. '${SCHEDULE_TASKS}' .. owner .. ':' .. id end
local function move_sched(owner, id, old, new)
  move_status('${SCHEDULE_INDEX}', 'schedules', owner, id, old, new)
end
-- The hash and the last occurrence whose time has come (ids below ``bound``, the id prefix of
-- now + 1 ms: an occurrence's id carries its due time).
local function sched_view(id, bound)
  local h = redis.call('HGETALL', skey(id))
  if #h == 0 then return {{}, ''} end
  local owner = redis.call('HGET', skey(id), 'o')
  local last = redis.call('ZREVRANGEBYLEX', made_key(owner, id), '(' .. bound, '-', 'LIMIT', 0, 1)
  return {h, last[1] or ''}
end
-- Cancel the occurrences made but not started: all of them (``all``), else those due after now.
-- Returns the latest due time after now of one that could not be cancelled (it started a few ms
-- early), or now: nothing may be made again up to it.
local function cancel_made(owner, id, now, all)
  local key = made_key(owner, id)
  local keep, off = now, 0
  while off < ${SCHEDULE_CANCEL_SCAN} do
    local ids = redis.call('ZREVRANGEBYLEX', key, '+', '-', 'LIMIT', off, 100)
    if #ids == 0 then return keep end
    for _, tid in ipairs(ids) do
      local t = load(tid)
      if not t then return keep end
      if t.s == 'scheduled' and (all or t.r > now) then
        cancel_task(tid, now)
      elseif t.s ~= 'scheduled' and t.s ~= 'cancelled' and t.r > keep then
        keep = t.r
      elseif t.s ~= 'scheduled' and t.r < now - ${SCHEDULE_CANCEL_SLACK_MS} then
        return keep
      end
    end
    off = off + 100
  end
  return keep
end

-- Lua for one old record (runs on the single Redis that holds the old layout, so it may touch the
-- old global keys and the new partition's keys in one script; KEYS[1] is the new partition's queue).
--- @include "prelude"

local OLDP = 'taskorch:'
local function old_job_moves(job, newjob)
  local s = redis.call('ZSCORE', OLDP .. 'queue', job)
  if s then redis.call('ZADD', QUEUE, s, newjob) end
  local l = redis.call('ZSCORE', OLDP .. 'leases', job)
  if l then
    redis.call('ZADD', LEASES, l, newjob)
    local w = redis.call('HGET', OLDP .. 'lease-owner', job)
    if w then redis.call('HSET', LEASE_OWNER, newjob, w) end
  end
  redis.call('ZREM', OLDP .. 'queue', job)
  redis.call('ZREM', OLDP .. 'leases', job)
  redis.call('HDEL', OLDP .. 'lease-owner', job)
end
local function renamed(job, old, id)
  if not job or job == '' then return '' end
  if string.sub(job, 1, #old) == old then return id .. string.sub(job, #old + 1) end
  return job
end
-- The old hash taskorch:task:<old> becomes the record t:<id> (id == old unless re-minted).
local function migrate_task(old, id, orc)
  local ok = OLDP .. 'task:' .. old
  local h = redis.call('HGETALL', ok)
  if #h == 0 then return 0 end
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  local t = {o = f.owner, s = f.status, h = '', p = f.spec, n = f.name or '',
    r = tonumber(f.run_at), c = tonumber(f.created_at), u = tonumber(f.updated_at),
    g = tonumber(f.gen or '1'), a = tonumber(f.attempt or '0'), l = tonumber(f.lost or '0'),
    oi = orc ~= '' and orc or (f.orchestration_id or ''), sb = '', lj = '', rj = ''}
  if f.status == 'running' then
    t.st = tonumber(f.started_at); t.sf = tonumber(f.scheduled_for); t.sb = f.started_by or ''
  end
  if f.status == 'retrying' then
    t.lj = renamed(f.lost_job, old, id); t.rj = renamed(f.retry_job, old, id)
  end
  if f.finished_at and f.finished_at ~= '' then t.ft = tonumber(f.finished_at) end
  save(id, t)
  if redis.call('EXISTS', ok .. ':attempts') == 1 then
    redis.call('RENAME', ok .. ':attempts', tkey(id) .. ':a')
  end
  move_task(t.o, id, nil, t.s)
  if f.job and f.job ~= '' then
    old_job_moves(f.job, renamed(f.job, old, id))
    redis.call('DEL', OLDP .. 'job:' .. f.job)
  end
  local fin = redis.call('ZSCORE', OLDP .. 'finished', 't:' .. old)
  if fin then
    redis.call('ZADD', P .. 'f', fin, 't:' .. id)
    redis.call('ZREM', OLDP .. 'finished', 't:' .. old)
  end
  redis.call('DEL', ok)
  return 1
end

-- An orchestration is a hash (o:<id>) plus per-step hashes keyed by step index: :specs (the step's
-- task spec), :conds (a step's own condition), :state (t<i> task id, s<i> final step status,
-- c<i> check status) and a list :check:<i> of check attempts. Advancing reads and writes only the
-- fields of one index, so step 9,999 costs what step 1 does. Each transition is one script that
-- checks the orchestration is where the event expects it (so a replayed event after a crash is a
-- no-op) and creates the next step's task or job in the same breath. Its step tasks are created in
-- its partition (their ids are made for it), so every transition stays in one slot.
--- @include "prelude"

local function okey(id) return P .. '${ORCH}' .. id end
local function finish_orc(id, owner, old, status, now)
  redis.call('HSET', okey(id), 'status', status, 'finished_at', now, 'updated_at', now,
    'phase', 'done', 'job', '')
  finished('o', id, now)
  move_orc(owner, id, old, status)
  publish(owner, 'orchestration', id, status)
end
local function start_step(id, owner, i, task_id, now, ahead)
  local spec = redis.call('HGET', okey(id) .. ':specs', i)
  new_task(task_id, owner, '', spec, 'step ' .. i, now, now, id, ahead)
  redis.call('HSET', okey(id) .. ':state', 't' .. i, task_id)
  redis.call('HSET', okey(id), 'current_step', i, 'phase', 'step', 'updated_at', now, 'job', '')
  publish(owner, 'orchestration', id, 'running')
end
local function run_fallback(id, owner, fallback, fid, now, ahead)
  if fallback and fallback ~= '' then
    new_task(fid, owner, '', fallback, 'fallback', now, now, id, ahead)
    redis.call('HSET', okey(id), 'fallback_task', fid, 'fallback_status', 'scheduled')
  end
end
-- What the API needs to answer for an orchestration, read in the script that wrote it: its hash,
-- its :state and which steps have a condition of their own.
local function orc_view(id)
  return {redis.call('HGETALL', okey(id)), redis.call('HGETALL', okey(id) .. ':state'),
    redis.call('HKEYS', okey(id) .. ':conds')}
end
local function condition_for(id, i, shared)
  local own = redis.call('HGET', okey(id) .. ':conds', i)
  if own then return own end
  if shared and shared ~= '' then return shared end
  return nil
end
local function schedule_check(id, i, n, due, now, ahead)
  local job = id .. '.c' .. i .. '.' .. n
  enqueue(job, 'orc', 'check|' .. id .. '|' .. i .. '|' .. n, due, now)
  redis.call('HSET', okey(id), 'job', job)
  redis.call('HSET', okey(id) .. ':state', 'c' .. i, 'waiting')
  wake(due, now, ahead)
end

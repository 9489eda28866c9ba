-- An orchestration is a hash (o:<id>) plus per-step hashes keyed by step index: :specs (the step's
-- task spec), :conds (a step's own condition), :state (t<i> task id, s<i> final step status,
-- c<i> check status, st<i>/ft<i> when its latest run started/ended, e<i> an error of ours), a list
-- :check:<i> of check attempts, :names (step name -> index) and :out (index -> the step's kept
-- output, {"o": output, "c": status_code, "t": truncated}, written by finish.lua with the step
-- task's final outcome), :kinds (index -> kind, for steps that are not task steps). Advancing reads and writes only the
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
local function run_fallback(id, owner, fallback, fid, now, ahead)
  if fallback == '-' then  -- its references could not be resolved: it is not called
    redis.call('HSET', okey(id), 'fallback_task', '', 'fallback_status', 'failed')
  elseif fallback and fallback ~= '' then
    new_task(fid, owner, '', fallback, 'fallback', now, now, id, ahead)
    redis.call('HSET', okey(id), 'fallback_task', fid, 'fallback_status', 'scheduled')
  end
end
-- The fallback as the step machine resolved it ('' when it has no references: the stored one).
local function fallback_of(id, resolved)
  if resolved ~= '' then return resolved end
  return redis.call('HGET', okey(id), 'fallback')
end
-- Step i (or the run) ends the orchestration failed without a call's answer to blame: err is
-- the error's JSON ({"code": "reference_missing"|"step_limit", ...}).
local function fail_step(id, owner, i, err, now, fb, fid, ahead)
  local code = cjson.decode(err).code
  redis.call('HSET', okey(id) .. ':state', 's' .. i, 'failed', 'e' .. i, err, 'ft' .. i, now)
  redis.call('HSET', okey(id), 'current_step', i, 'error', err)
  finish_orc(id, owner, 'running', 'failed', now)
  run_fallback(id, owner, fallback_of(id, fb), fid, now, ahead)
  return code
end
-- Starts step i: counts it against max_steps_run (past it the orchestration fails with
-- step_limit), then creates its task with the spec the step machine resolved (spec '': the
-- stored one, it has no references), or fails it with err (a reference it could not resolve:
-- no call is made). A step run again (a check's goto) starts from a clean state. Returns
-- 'next' when the step's task was created, 'sleep' when a sleep began, else the error's code.
local function start_step(id, owner, i, task_id, now, ahead, spec, err, fb, fid)
  local key = okey(id)
  local run = redis.call('HINCRBY', key, 'steps_run', 1)
  local limit = tonumber(redis.call('HGET', key, 'max_steps_run')) or ${DEFAULT_MAX_STEPS_RUN}
  redis.call('HDEL', key .. ':state', 's' .. i, 'c' .. i, 'e' .. i, 'ft' .. i)
  redis.call('HDEL', key .. ':out', i)
  redis.call('DEL', key .. ':check:' .. i)
  redis.call('HSET', key .. ':state', 'st' .. i, now)
  redis.call('HSET', key, 'current_step', i, 'phase', 'step', 'updated_at', now, 'job', '')
  if run > limit then
    return fail_step(id, owner, i, cjson.encode({code = 'step_limit', message = 'The ' ..
      'orchestration ran its max_steps_run of ' .. limit .. ' steps; step ' .. i ..
      ' was not started.'}), now, fb, fid, ahead)
  end
  if err and err ~= '' then return fail_step(id, owner, i, err, now, fb, fid, ahead) end
  if not spec or spec == '' then spec = redis.call('HGET', key .. ':specs', i) end
  if string.sub(spec, 1, 6) == '{"k":"' then
    -- a sleep: a wake job in the queue at its due time, which a restart neither loses nor
    -- shortens (orc_wake.lua ends the step). Its output, null, is there for the step machine
    -- to resolve the next step's references before that script.
    local k = cjson.decode(spec)
    redis.call('HSET', key .. ':out', i, '{}')
    local due = math.max(k.at or (now + k.ms), now)
    local job = id .. '.w' .. i .. '.' .. run
    enqueue(job, 'orc', 'wake|' .. id .. '|' .. i .. '|' .. run, due, now)
    redis.call('HSET', key, 'status', 'waiting', 'phase', 'sleep', 'job', job)
    move_orc(owner, id, 'running', 'waiting')
    wake(due, now, ahead)
    publish(owner, 'orchestration', id, 'waiting')
    return 'sleep'
  end
  new_task(task_id, owner, '', spec, 'step ' .. i, now, now, id, ahead)
  redis.call('HSET', key .. ':state', 't' .. i, task_id)
  publish(owner, 'orchestration', id, 'running')
  return 'next'
end
-- What the API needs to answer for an orchestration, read in the script that wrote it: its hash,
-- its :state, which steps have a condition of their own, the step names, the kept outputs and
-- the kinds of the steps that are not task steps.
local function orc_view(id)
  local key = okey(id)
  return {redis.call('HGETALL', key), redis.call('HGETALL', key .. ':state'),
    redis.call('HKEYS', key .. ':conds'), redis.call('HGETALL', key .. ':names'),
    redis.call('HGETALL', key .. ':out'), redis.call('HGETALL', key .. ':kinds')}
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
-- Step i succeeded (its task, or a sleep): its check, the next step, or the end. Returns as
-- orc_step_done.lua does.
local function step_succeeded(id, owner, i, n, shared, now, ahead, next_tid, spec, err, fb, fid)
  if i == n - 1 then
    finish_orc(id, owner, 'running', 'succeeded', now)
    return 'succeeded'
  end
  local cond = condition_for(id, i, shared)
  if cond then
    local delay = tonumber(cjson.decode(cond).delay) or 0
    redis.call('HSET', okey(id), 'phase', 'check', 'check_n', 0, 'updated_at', now)
    schedule_check(id, i, 1, now + math.floor(delay * 1000), now, ahead)
    publish(owner, 'orchestration', id, 'running')
    return 'check'
  end
  return start_step(id, owner, i + 1, next_tid, now, ahead, spec, err, fb, fid)
end

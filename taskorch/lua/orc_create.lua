-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, name, due, now, condition|'', fallback|'', idem_key|'', idem_ttl, wake_ms, n,
--       then n step specs, then n step conditions ('' where the step has none), then
--       deadline_ms|'' (see lib/past_deadline.lua), partitions, this partition, input (JSON),
--       max_steps_run, then n step names ('' where the step has none), then (index, kind) pairs
--       for the steps that are not task steps (:kinds; their specs are the kind's, see
--       start_step).
-- Returns {created (1/0), then orc_view's parts: hash, state, own-condition steps...}, {2, id} (see
-- idempotent), or {-1}.
--- @include "prelude"
--- @include "orchestration"
--- @include "past_deadline"

if past_deadline(ARGV[12 + 2 * tonumber(ARGV[11])]) then return {-1} end
local id, owner, due, now = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
local nsteps = tonumber(ARGV[11])
local existing, elsewhere = idempotent(ARGV[8], id, ARGV[9], P .. 'o:', ARGV[13 + 2 * nsteps],
  ARGV[14 + 2 * nsteps])
if elsewhere then return {2, existing} end
if existing then
  local view = orc_view(existing)
  return {0, unpack(view)}
end
local n = tonumber(ARGV[11])
local key = okey(id)
redis.call('HSET', key, 'id', id, 'owner', owner, 'status', 'scheduled', 'name', ARGV[3],
  'run_at', due, 'created_at', now, 'updated_at', now, 'current_step', 0, 'n', n,
  'condition', ARGV[6], 'fallback', ARGV[7], 'phase', 'pending', 'gen', 1, 'check_n', 0,
  'fallback_task', '', 'fallback_status', '', 'job', id .. '.s1', 'input', ARGV[15 + 2 * n],
  'max_steps_run', ARGV[16 + 2 * n], 'steps_run', 0, 'error', '')
for i = 1, n do
  redis.call('HSET', key .. ':specs', i - 1, ARGV[11 + i])
  if ARGV[11 + n + i] ~= '' then redis.call('HSET', key .. ':conds', i - 1, ARGV[11 + n + i]) end
  if ARGV[16 + 2 * n + i] ~= '' then redis.call('HSET', key .. ':names', ARGV[16 + 2 * n + i], i - 1) end
end
for j = 17 + 3 * n, #ARGV, 2 do redis.call('HSET', key .. ':kinds', ARGV[j], ARGV[j + 1]) end
move_orc(owner, id, nil, 'scheduled')
enqueue(id .. '.s1', 'orc', 'start|' .. id .. '|1', due, now)
publish(owner, 'orchestration', id, 'scheduled')
wake(due, now, tonumber(ARGV[10]))
local view = orc_view(id)
return {1, unpack(view)}

-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, job, attempt_json|'', now, next_job|'', next_arg, next_due, wake_ms. Records one delivery
-- of a callback and schedules the next one ('' when delivered or given up), if the job is still
-- the task's callback job (a repeat, or a worker that lost the job to a reaper, records nothing).
-- Returns 1 when recorded, else 0.
--- @include "prelude"

local id, job, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local t = load(id)
drop_job(job)
if not t or t.cj ~= job then return 0 end
if ARGV[3] ~= '' then redis.call('RPUSH', tkey(id) .. '${CALLBACK_ATTEMPTS}', ARGV[3]) end
t.cj = nil
if ARGV[5] ~= '' then
  local due = tonumber(ARGV[7])
  enqueue(ARGV[5], 'cb', ARGV[6], due, now)
  t.cj = ARGV[5]
  wake(due, now, tonumber(ARGV[8]))
end
save(id, t)
publish(t.o, 'task', id, t.s)
return 1

-- A task that ends succeeded (or failed) with a callback (failure_callback) in its spec gets a job
-- 'cb' that POSTs the final Task there (taskorch/callbacks.py). It is made by the script that
-- records the outcome (finish.lua, or reap.lua when lost attempts run out), so there is one per outcome,
-- in the task's partition, whatever becomes of the worker. The job is <id>.cb<gen>.<n> (n the
-- delivery attempt), its argument <id>|<gen>|<status>|<n>; the record's cj names it while due.
-- The spec is JSON the record never decodes: its callbacks show as '"cb":{' / '"fc":{' (a payload
-- holding that text makes a job that finds no callback and ends).
--- @include "prelude"

local function schedule_callback(id, t, status, now, ahead)
  if t.oi ~= '' or t.p == '' then return end
  local mark = '"fc":{'
  if status == 'succeeded' then mark = '"cb":{' end
  if not string.find(t.p, mark, 1, true) then return end
  local job = id .. '.cb' .. t.g .. '.1'
  enqueue(job, 'cb', id .. '|' .. t.g .. '|' .. status .. '|1', now, now)
  t.cj = job
  wake(now, now, ahead)
end

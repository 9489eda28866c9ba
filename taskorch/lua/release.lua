-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: worker_id, then pairs job, due. Hands claimed-but-unstarted jobs back to the queue: on
-- shutdown, and when the worker gives up on them. Only the lease's owner can hand a job back.
-- Returns how many jobs went back to the queue.
--- @include "prelude"

local n = 0
for i = 2, #ARGV, 2 do
  local job = ARGV[i]
  if redis.call('HGET', LEASE_OWNER, job) == ARGV[1] then
    redis.call('ZREM', LEASES, job)
    redis.call('HDEL', LEASE_OWNER, job)
    if job_live(job) then
      redis.call('ZADD', QUEUE, ARGV[i + 1], job)
      n = n + 1
    end
  end
end
if n > 0 then redis.call('PUBLISH', '${WAKE_CHANNEL}', ARGV[1]) end
return n

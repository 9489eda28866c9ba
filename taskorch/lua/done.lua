-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: job, worker_id, outcome. Ends a non-task job (an orchestration event) that ran.
-- Returns 1.
--- @include "prelude"

if redis.call('HGET', LEASE_OWNER, ARGV[1]) ~= ARGV[2] then return 0 end
drop_job(ARGV[1])
return 1

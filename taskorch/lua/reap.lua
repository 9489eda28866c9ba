-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: now (unused: Redis's clock decides), limit, max_lost, gap_ms, grace_ms. Recovers this
-- partition's jobs whose claim lapsed: a worker died holding them. A claimed job that never started
-- goes back to the queue; a task that was running gets a "worker lost" attempt and is retried at
-- once. Returns the number of jobs recovered, or -1 while it holds back after an outage.
--
-- An outage is not a death: while Redis was out of reach (killed, frozen, cut off) no worker
-- could renew its leases, so every lease may have lapsed by the time Redis is back, yet the
-- workers holding them are alive, some with a call's outcome in hand. Reapers run every second
-- or so; when the last reap is more than gap_ms old, nobody could reach Redis (or no worker ran),
-- and no reaper recovers anything for grace_ms: long enough for every live worker to renew what
-- it still holds. What has lapsed after that belonged to a dead worker, or was handed back.
--- @include "prelude"
--- @include "callbacks"
--- @include "lease_clock"

local now, max_lost = clock(), tonumber(ARGV[3])
local gap, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local RK = P .. 'r'
local r = redis.call('HMGET', RK, 'last', 'grace_until')
local last, grace_until = tonumber(r[1]), tonumber(r[2] or '0')
if last and now - last > gap and now + grace > grace_until then
  grace_until = now + grace
  redis.call('HSET', RK, 'grace_until', grace_until)
end
if not last or now > last then redis.call('HSET', RK, 'last', now) end
if now < grace_until then return -1 end
local items = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, ARGV[2])
local n = 0
for _, job in ipairs(items) do
  redis.call('ZREM', LEASES, job)
  redis.call('HDEL', LEASE_OWNER, job)
  if not is_task_job(job) then
    if redis.call('EXISTS', P .. 'j:' .. job) == 1 then
      n = n + 1
      redis.call('ZADD', QUEUE, now, job)
    end
  else
    local id = task_of_job(job)
    local t = id and load(id)
    if t and job_of(id, t) == job then
      n = n + 1
      if (t.s == 'scheduled' or t.s == 'retrying') and t.qa then
        -- queues: admitted for a slot it never used: back in its line, to be paced again
        redis.call('ZADD', qwait(t.o, t.q), t.r, job)
        queue_release(t, now)
        save(id, t)
      elseif t.s == 'scheduled' or t.s == 'retrying' then
        redis.call('ZADD', QUEUE, now, job)
      elseif t.s == 'running' then
        t.l = t.l + 1
        redis.call('RPUSH', tkey(id) .. ':a', cjson.encode({n = t.a, sf = t.sf, st = t.st, ft = now,
          lat = t.st - t.sf, err = 'worker lost: no outcome within the lease, retrying'}))
        redis.call('HINCRBY', P .. 'm', 'attempts_total:lost', 1)
        left_running(t)
        queue_release(t, now)
        t.u = now
        if t.l > max_lost then
          t.s = 'failed'; t.ft = now
          schedule_callback(id, t, 'failed', now, 0)  -- issue #12 (lua/lib/callbacks.lua)
          save(id, t)
          finished('t', id, now)
          move_task(t.o, id, 'running', 'failed', t.q)
          publish(t.o, 'task', id, 'failed')
          if t.oi ~= '' then
            enqueue(t.oi .. '.' .. id .. '.failed', 'orc', 'done|' .. t.oi .. '|' .. id .. '|failed',
              now, now)
          end
        else
          t.s = 'retrying'; t.g = t.g + 1; t.r = now; t.lj = job; t.rj = id .. '.' .. t.g
          save(id, t)
          redis.call('ZADD', QUEUE, now, t.rj)
          move_task(t.o, id, 'running', 'retrying', t.q)
          publish(t.o, 'task', id, 'retrying')
        end
      end
    end
  end
end
if n > 0 then redis.call('PUBLISH', '${WAKE_CHANNEL}', now) end
return n

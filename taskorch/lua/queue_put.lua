-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV[1]: a map {owner, queue, now, set, lift, statuses} (msgpack; JSON where the server's Lua
-- has no cmsgpack), as queues._PutArgs sends it: now in ms; set, setting name -> the text to
-- store; lift, the names of the settings to lift; statuses, what the view counts. A setting in
-- neither keeps its value; lib/queue.lua names the settings. Returns the queue's view. A new
-- rate takes effect at once: a slot reserved under a slower one is brought forward. Whatever
-- the change, the queue's waiting tasks are looked at again (resumed, more room).
--- @include "prelude"
--- @include "queue"

local A = unpack_record(ARGV[1])  -- the records' codec: msgpack, JSON without cmsgpack
local owner, q, now = A.owner, A.queue, A.now
local old_rate = queue_conf(owner, q).rate
queue_store(owner, q, A.set, A.lift)
local cf = queue_conf(owner, q)
if cf.rate and cf.rate ~= old_rate and cf.next > now + 1000 / cf.rate then
  redis.call('HSET', qkey('${QUEUE_CONF}', owner, q), 'next',
    string.format('%.3f', now + 1000 / cf.rate))
end
redis.call('SADD', P .. '${QUEUE_NAMES}' .. owner, q)
queue_kick(owner, q, now, ${CLAIM_AHEAD_MS})
return queue_view(owner, q, A.statuses)

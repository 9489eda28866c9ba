-- A named queue's settings and state (issue #12; taskorch/queues.py explains the flow): one hash,
-- qc:<owner>:<queue>, in the queue's partition, where its tasks live too. Its fields, each named
-- in QUEUE_FIELDS below and read nowhere else:
--   rate    the setting ``rate``: dispatches per second (a slot each 1000 / rate ms); absent: none
--   mc      the setting ``max_concurrent``: its tasks admitted at once, at most; absent: no cap
--   paused  the setting ``paused``: '1' while paused; '0' or absent: not paused
--   next    state: the next free dispatch slot, ms since the epoch ('%.3f'); absent: 0
--   run     state: its tasks admitted now (each carries qa = 1 until its attempt ends); absent: 0
-- The state is written where it changes: run by claim.lua (up) and the prelude's queue_release
-- (down), next by claim.lua and queue_put.lua. A setting is stored as the text queue_put was
-- given (queues._text). The fields keep the names stored since issue #12, so that a queue an
-- older taskorch set reads as it was.
-- Due tasks of a limited queue wait in qw:<owner>:<queue>, by due time; qr lists the queues whose
-- first waiting task may be admitted, by when. The prelude includes this file (its queue_kick
-- and queue_release read queue_conf), so every task script has it.
--- @include "partition"

local QREADY = P .. '${QUEUE_READY}'
local function qkey(kind, owner, q) return P .. kind .. owner .. ':' .. q end
local function qwait(owner, q) return qkey('${QUEUE_WAITING}', owner, q) end
-- Each field of the hash: the setting's name (the API's, as models.QueueUpdate and Queue name it,
-- and queue_put's ARGV map's; none for state), how admission reads its text (queue_conf), and
-- what the view answers for it when absent (false: null).
local QUEUE_FIELDS = {
  {field = 'rate', setting = 'rate', read = tonumber, absent = false},
  {field = 'mc', setting = 'max_concurrent', read = tonumber, absent = false},
  {field = 'paused', setting = 'paused', read = function(v) return v == '1' end, absent = '0'},
  {field = 'next', read = function(v) return tonumber(v) or 0 end},
  {field = 'run', read = function(v) return math.max(tonumber(v) or 0, 0) end},
}
local QUEUE_FIELD_NAMES = {}
for i, f in ipairs(QUEUE_FIELDS) do QUEUE_FIELD_NAMES[i] = f.field end
-- Every field of the queue's hash, in QUEUE_FIELDS' order: one HMGET.
local function queue_fields(owner, q)
  return redis.call('HMGET', qkey('${QUEUE_CONF}', owner, q), unpack(QUEUE_FIELD_NAMES))
end
-- What admission reads (claim, start, queue_kick): {rate, mc, paused, next, run}, by field name.
local function queue_conf(owner, q)
  local r = queue_fields(owner, q)
  local cf = {}
  for i, f in ipairs(QUEUE_FIELDS) do cf[f.field] = f.read(r[i]) end
  return cf
end
-- Set the settings of ``set`` (setting name -> the text to store) and lift those named in
-- ``lift`` (their fields deleted); the others keep theirs. A name that is no setting is an error,
-- before anything is written.
local function queue_store(owner, q, set, lift)
  local by = {}
  for _, f in ipairs(QUEUE_FIELDS) do if f.setting then by[f.setting] = f.field end end
  local key, hset, hdel = qkey('${QUEUE_CONF}', owner, q), {}, {}
  for name, text in pairs(set) do
    hset[#hset + 1] = by[name] or error('no queue setting ' .. tostring(name))
    hset[#hset + 1] = text
  end
  for _, name in ipairs(lift) do hdel[#hdel + 1] = by[name] or error('no queue setting ' .. name) end
  if #hset > 0 then redis.call('HSET', key, unpack(hset)) end
  if #hdel > 0 then redis.call('HDEL', key, unpack(hdel)) end
end
-- The settings by the API's names, {name, text, ...}, from a queue_fields answer: an absent one
-- as its ``absent`` (so {} gives a queue never set, as the default queue is).
local function queue_settings(r)
  local out = {}
  for i, f in ipairs(QUEUE_FIELDS) do
    if f.setting then
      out[#out + 1] = f.setting
      out[#out + 1] = r[i] or f.absent
    end
  end
  return out
end
-- The view queues._view reads: {its settings (queue_settings), the task counts by status
-- (``statuses``, in order), the tasks waiting}.
local function queue_view(owner, q, statuses)
  local counts, ix = {}, qkey('${QUEUE_INDEX}', owner, q) .. ':'
  for i, s in ipairs(statuses) do counts[i] = redis.call('ZCARD', ix .. s) end
  return {queue_settings(queue_fields(owner, q)), counts, redis.call('ZCARD', qwait(owner, q))}
end

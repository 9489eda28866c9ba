-- The partition a script runs in (taskorch/partitions.py): its prefix P, taken from KEYS[1] (the
-- partition's queue, taskorch:{<tag>}:q), which every key the script names starts with, so that
-- all of them are in one Redis Cluster slot. Included by the prelude and by lib/queue.lua.

local P = string.sub(KEYS[1], 1, -${QUEUE_CUT})
local QUEUE = KEYS[1]

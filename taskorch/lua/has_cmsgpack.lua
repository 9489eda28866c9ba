-- KEYS[1]: any key (it routes the call to a node). ARGV: none.
-- Returns 1 where the server's Lua has cmsgpack (Redis), 0 where it has not (fakeredis, for
-- `taskorch dev`): how a script's ARGV map is encoded for this server (queues._PutArgs).

if cmsgpack then return 1 end
return 0

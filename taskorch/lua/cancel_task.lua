-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: id, owner, now.
-- Returns {'ok', view, attempts} | {'not_found'} | {'conflict', status} | {'in_orchestration', id}
--- @include "prelude"

local id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = load(id)
if not t or t.o ~= owner then return {'not_found'} end
if t.oi ~= '' then return {'in_orchestration', t.oi} end
if t.s ~= 'scheduled' and t.s ~= 'retrying' then return {'conflict', t.s} end
cancel_task(id, now)
local view = task_view(id)
return {'ok', view[1], view[2]}

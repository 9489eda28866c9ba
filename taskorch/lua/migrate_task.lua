-- KEYS[1]: the partition's queue, taskorch:{<tag>}:q (every key the script names is in its slot).
-- ARGV: old id, new id.
-- Returns 1 when moved, 0 when the old record is gone (moved already).
--- @include "prelude"
--- @include "migrate_move"
return migrate_task(ARGV[1], ARGV[2], '')
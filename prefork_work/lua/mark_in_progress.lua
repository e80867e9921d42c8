-- Replace one entry of a pool's in-progress list with new bytes (LREM and RPUSH: any Redis).
--
-- Used by the master for the jobs in flight in a child that died running several at once:
-- each is rewritten marked to run alone next time, then the pool's lists are reclaimed as
-- usual (reclaim_pool). Nothing is added when the entry is gone (already reclaimed).
--
-- KEYS[1] = <p>jobs:<name>:<poolID>:inprogress
-- ARGV[1] = the entry's exact bytes, ARGV[2] = the new bytes
--
-- Returns 1 when the entry was found and replaced, 0 otherwise.

if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1

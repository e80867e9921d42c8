-- Take one job out of a pool's in-progress list and give it a fate (retry or dead).
--
-- Used by the master for a job whose process died under it: a poison job reaching
-- max_crashes goes to dead, a job killed for its hard timeout goes to retry. Like the ack,
-- it releases the lock only if the entry was still there.
--
-- KEYS[1] = <p>jobs:<name>:<poolID>:inprogress
-- KEYS[2] = <p>jobs:<name>:lock
-- KEYS[3] = <p>jobs:<name>:lock_info
-- KEYS[4] = the target sorted set (<p>retry or <p>dead)
-- ARGV[1] = pool ID, ARGV[2] = the entry's exact bytes, ARGV[3] = score,
-- ARGV[4] = new bytes, or "" to drop the job (skip_dead)
--
-- Returns 1 when the entry was found and moved, 0 otherwise.

if redis.call('LREM', KEYS[1], -1, ARGV[2]) == 0 then
  return 0
end
redis.call('DECR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
end
return 1

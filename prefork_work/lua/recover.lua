-- A worker's recovery after a lost fetch reply: raise the pool's fence, then read its lists.
--
-- Atomic, so a late copy of the lost call (lua/fetch.lua) either ran before this read (its
-- jobs are in the lists returned, and the worker requeues what it does not hold) or comes
-- after it and is refused by the fence.
--
-- KEYS[1]  = <p>pw:fence   (pool ID -> highest fetch call sequence seen)
-- KEYS[1 + g] = <p>jobs:<name g>:<poolID>:inprogress, one per job name of the pool
-- ARGV[1]  = pool ID
-- ARGV[2]  = the sequence of the pool's last call sent (the lost one, or a later lost one)
--
-- Returns the entries of each in-progress list, in KEYS order.

local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not seen or seen < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local lists = {}
for g = 2, #KEYS do
  lists[g - 1] = redis.call('LRANGE', KEYS[g], 0, -1)
end
return lists

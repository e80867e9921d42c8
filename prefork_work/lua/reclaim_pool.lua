-- Requeue every in-progress job of a dead pool and release the locks it held.
--
-- gocraft's redisLuaReenqueueJob (one job per call) and redisLuaReapStaleLocks in one
-- atomic call. Entries move oldest first to the head of their queue (the back of the line,
-- as in gocraft). Then what lock_info[pool] holds is subtracted from lock, the field is
-- deleted, and a lock that went negative is set to 0. Net effect as in gocraft: lock goes
-- down by what lock_info[pool] recorded; recompute_locks heals any drift left over.
--
-- KEYS[4g-3..4g] for each job name g: <p>jobs:<name>:<poolID>:inprogress, <p>jobs:<name>,
--                <p>jobs:<name>:lock, <p>jobs:<name>:lock_info
-- KEYS[#KEYS]  = <p>pw:wake
-- ARGV[1]      = the dead pool's ID
-- ARGV[2]      = how many wake tokens the wake list may hold
--
-- Returns the number of jobs requeued.

local pool = ARGV[1]
local total = 0
for g = 1, (#KEYS - 1) / 4 do
  local inprogress, queue, lock, info = KEYS[4 * g - 3], KEYS[4 * g - 2], KEYS[4 * g - 1], KEYS[4 * g]
  local moved = 0
  while redis.call('RPOPLPUSH', inprogress, queue) do
    moved = moved + 1
  end
  local held = tonumber(redis.call('HGET', info, pool))
  if held then
    redis.call('DECRBY', lock, held)
    redis.call('HDEL', info, pool)
    local value = tonumber(redis.call('GET', lock))
    if value and value < 0 then redis.call('SET', lock, 0) end
  end
  total = total + moved
end
if total > 0 then
  local wake = KEYS[#KEYS]
  local cap = tonumber(ARGV[2])
  for _ = 1, math.min(total, cap) do redis.call('LPUSH', wake, '1') end
  redis.call('LTRIM', wake, 0, cap - 1)
end
return total

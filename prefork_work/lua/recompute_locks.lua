-- Rebuild a job name's lock and lock_info from its in-progress lists (locks heal, W21).
--
-- KEYS[1] = <p>jobs:<name>:lock
-- KEYS[2] = <p>jobs:<name>:lock_info
-- KEYS[2+i] = <p>jobs:<name>:<pool_i>:inprogress, for every pool found by SCAN or in lock_info
-- ARGV[i] = pool_i
--
-- lock_info[pool_i] becomes LLEN of its list (fields at 0 are deleted, so lock_info does not
-- grow with every pool ever started, W23); a pool that appears in lock_info but not in ARGV
-- (it fetched after the caller's SCAN) keeps its field. lock becomes the sum.
-- Returns the new lock value.

local info = KEYS[2]
local counts = {}
for i = 1, #ARGV do
  counts[ARGV[i]] = redis.call('LLEN', KEYS[2 + i])
end
local kept = redis.call('HGETALL', info)
local total = 0
redis.call('DEL', info)
for i = 1, #kept, 2 do
  local pool = kept[i]
  if counts[pool] == nil then
    local value = tonumber(kept[i + 1]) or 0
    if value > 0 then
      redis.call('HSET', info, pool, value)
      total = total + value
    end
  end
end
for pool, n in pairs(counts) do
  if n > 0 then
    redis.call('HSET', info, pool, n)
    total = total + n
  end
end
redis.call('SET', KEYS[1], total)
return total

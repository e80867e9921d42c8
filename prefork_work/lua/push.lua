-- Enqueue jobs of one name and wake idle workers, in one call (one round trip, where a
-- pipeline of LPUSH, LPUSH, LTRIM and SADD costs a client noticeably more per job).
--
-- KEYS[1] = <p>jobs:<name>
-- KEYS[2] = <p>pw:wake
-- KEYS[3] = <p>known_jobs
-- ARGV[1] = the job name, or "" when the caller's known_jobs cache says the SADD is done
-- ARGV[2] = how many wake tokens the list may hold
-- ARGV[3..] = payloads, in enqueue order (the first is served first)
--
-- Returns the queue's length.

local length = 0
for i = 3, #ARGV do
  length = redis.call('LPUSH', KEYS[1], ARGV[i])
end
local tokens = math.min(#ARGV - 2, tonumber(ARGV[2]))
for _ = 1, tokens do redis.call('LPUSH', KEYS[2], '1') end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
if ARGV[1] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[1])
end
return length

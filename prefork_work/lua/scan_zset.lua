-- Members of a sorted set that contain a needle: one bounded step of a scan, inside Redis.
--
-- A job status lookup by id has no index into the scheduled, retry and dead sets (Go writes
-- them too), so it searches their members for '"id":"<id>"'. ZSCAN MATCH does the same
-- with a glob per member and a round trip per step: about three times slower here. Each
-- call looks at ARGV[3] members by rank, so Redis is never held for long however big the
-- set; a member that moves while a scan is under way can be missed, as a job moving
-- between sets can be by any lookup.
--
-- KEYS[1] = the sorted set
-- ARGV[1] = the needle (plain text, not a pattern)
-- ARGV[2] = the rank to start at
-- ARGV[3] = how many members to look at
--
-- Returns {next rank or -1 when the set is done, member, score, member, score, ...}.

local needle, start, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local chunk = redis.call('ZRANGE', KEYS[1], start, start + count - 1, 'WITHSCORES')
local found = {-1}
if #chunk == 2 * count then found[1] = start + count end
for j = 1, #chunk, 2 do
  if string.find(chunk[j], needle, 1, true) then
    found[#found + 1] = chunk[j]
    found[#found + 1] = chunk[j + 1]
  end
end
return found

-- Find a queued job by id: a bounded scan of both ends of each queue, inside Redis.
--
-- A queue holds job JSON; LPOS needs the whole element, which a lookup by id does not have,
-- so each element is searched for the needle '"id":"<id>"' (how Go and we encode the id).
-- Only the oldest and newest ARGV[2] entries of each queue are looked at, so the call's
-- cost is bounded however long the queue is (a job deep in a huge queue is not found).
--
-- KEYS[k] = <p>jobs:<name> for each queue to search
-- ARGV[1] = the needle, ARGV[2] = how many entries to look at from each end
--
-- Returns {k, element} for the first match, or false.

local needle, limit = ARGV[1], tonumber(ARGV[2])
for k = 1, #KEYS do
  local len = redis.call('LLEN', KEYS[k])
  if len > 0 then
    local ranges = {{-limit, -1}}  -- the oldest first: the served end
    if len > limit then ranges[2] = {0, math.min(limit, len - limit) - 1} end
    for _, range in ipairs(ranges) do
      for _, element in ipairs(redis.call('LRANGE', KEYS[k], range[1], range[2])) do
        if string.find(element, needle, 1, true) then
          return {k, element}
        end
      end
    end
  end
end
return false

-- Move due members of a sorted set (scheduled / retry) to their queues, atomically per member.
--
-- The caller read the due members and re-encoded each with t = now in Python (exact bytes;
-- gocraft's cjson round trip rounds big numbers and turns [] into {}, W26). A member moves
-- only if this call removed it, so concurrent requeuers never move one job twice.
--
-- KEYS[1]   = the source sorted set (<p>scheduled or <p>retry)
-- KEYS[2]   = <p>pw:wake
-- KEYS[2+i] = the target of member i: its queue <p>jobs:<name> ("q"), or <p>dead ("d") for
--             a member that cannot be decoded
-- ARGV[1]   = now (epoch seconds; the score of members sent to dead)
-- ARGV[2]   = how many wake tokens the wake list may hold
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2] = member i as it is in KEYS[1], the bytes to write,
--             and "q" or "d"
--
-- A member whose queue key holds something other than a list (a job named "hello:lock"
-- makes <p>jobs:hello:lock, the lock of "hello") is left untouched, before any write: the
-- LPUSH would fail after the ZREM and lose the job. The caller sends those to dead.
--
-- Returns {moved, i...}: the number of members moved to queues, then the numbers i of the
-- members refused for their queue key's type.

local moved = 0
local refused = {}
for i = 1, #KEYS - 2 do
  local member, payload, kind = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local usable = true
  if kind ~= 'd' then
    local kind_of_key = redis.call('TYPE', KEYS[2 + i])['ok']
    usable = kind_of_key == 'list' or kind_of_key == 'none'
  end
  if not usable then
    refused[#refused + 1] = i
  elseif redis.call('ZREM', KEYS[1], member) == 1 then
    if kind == 'd' then
      redis.call('ZADD', KEYS[2 + i], ARGV[1], payload)
    else
      redis.call('LPUSH', KEYS[2 + i], payload)
      moved = moved + 1
    end
  end
end
if moved > 0 then
  local cap = tonumber(ARGV[2])
  for _ = 1, math.min(moved, cap) do redis.call('LPUSH', KEYS[2], '1') end
  redis.call('LTRIM', KEYS[2], 0, cap - 1)
end
table.insert(refused, 1, moved)
return refused

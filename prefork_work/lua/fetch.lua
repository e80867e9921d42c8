-- Acknowledge finished jobs, then fetch up to N new ones: one round trip per batch.
--
-- gocraft/work acks each job with a MULTI (LREM, DECR lock, HINCRBY lock_info) and fetches
-- one job per script call; this script does both for a whole batch. Fetch semantics per
-- queue are gocraft's (redisLuaFetchJob): a queue is served when it is non-empty, not paused
-- (any value of the paused key) and below its max_concurrency; here up to N jobs are taken
-- from the first such queue, never more than max_concurrency - lock.
--
-- KEYS[1] = <p>retry
-- KEYS[2] = <p>dead
-- KEYS[3] = <p>pw:wake                     (deleted when the fetch finds nothing; see below)
-- KEYS[3 + 6*(g-1) + 1..6] = group g, in the priority-sampled order of this call:
--   1 <p>jobs:<name>   2 <p>jobs:<name>:<poolID>:inprogress   3 <p>jobs:<name>:paused
--   4 <p>jobs:<name>:lock   5 <p>jobs:<name>:lock_info   6 <p>jobs:<name>:max_concurrency
-- ARGV[1] = pool ID
-- ARGV[2] = how many jobs to fetch at most (0: only acknowledge)
-- ARGV[3] = max_payload_bytes (0: no limit): a larger entry is never handed to a worker; it
--           goes to <p>dead wrapped in a job {"name": <queue's job name>, "args":
--           {"malformed_payload": <the entry>}, "err": ...} (the job name is the queue key
--           after "<p>jobs:", <p> being KEYS[1] without its "retry")
-- ARGV[4] = max bytes of one batch: the batch stops after the job that reaches it
-- ARGV[5] = number of acknowledgements A, followed by A records of 4 values:
--   group number g (the queue the job was fetched from, in this call's order),
--   raw job bytes exactly as fetched,
--   outcome: "s" success, "r" retry, "d" dead, "x" dropped (skip_dead), "q" return unstarted
--            to the front of its queue (and wake an idle worker for it),
--   for "r"/"d": "<score> <re-serialized job>"; otherwise "".
--
-- Locks are released only for entries still in the in-progress list: if a reaper already
-- moved the job back to its queue (and released its lock), the ack neither releases the
-- lock again (gocraft drifts here, W12) nor adds a retry/dead copy of a job that is queued.
--
-- Returns {g, {job bytes...}}: the group the jobs came from (0 when none) and the jobs, in
-- fetch order (oldest first).
--
-- The wake list: when nothing could be fetched the list is cleared atomically; an idle worker
-- then blocks on it, and any job enqueued after this point pushes a fresh token.

local pool = ARGV[1]
local want = tonumber(ARGV[2])
local max_payload = tonumber(ARGV[3])
local max_batch = tonumber(ARGV[4])
local nacks = tonumber(ARGV[5])

local released = {}
local requeued = 0
local i = 6
for _ = 1, nacks do
  local g = tonumber(ARGV[i])
  local raw = ARGV[i + 1]
  local outcome = ARGV[i + 2]
  local extra = ARGV[i + 3]
  i = i + 4
  local base = 3 + 6 * (g - 1)
  if redis.call('LREM', KEYS[base + 2], -1, raw) > 0 then
    released[g] = (released[g] or 0) + 1
    if outcome == 'r' or outcome == 'd' then
      local sp = string.find(extra, ' ', 1, true)
      local target = KEYS[1]
      if outcome == 'd' then target = KEYS[2] end
      redis.call('ZADD', target, string.sub(extra, 1, sp - 1), string.sub(extra, sp + 1))
    elseif outcome == 'q' then
      redis.call('RPUSH', KEYS[base + 1], raw)
      requeued = requeued + 1
    end
  end
end
for g, n in pairs(released) do
  local base = 3 + 6 * (g - 1)
  redis.call('DECRBY', KEYS[base + 4], n)
  redis.call('HINCRBY', KEYS[base + 5], pool, -n)
end
if requeued > 0 then
  -- jobs handed back (a slow job's batch, a stopping worker): another worker takes them now
  for _ = 1, math.min(requeued, 64) do redis.call('LPUSH', KEYS[3], '1') end
  redis.call('LTRIM', KEYS[3], 0, 63)
end

if want <= 0 then
  return {0, {}}
end

-- An entry over max_payload_bytes, taken off the in-progress list it was just moved to.
local oversized = 0
local function dead_letter(queue, job)
  local now = tonumber(redis.call('TIME')[1])
  local prefix = string.sub(KEYS[1], 1, #KEYS[1] - 5) .. 'jobs:'
  local seed = pool .. ' ' .. now .. ' ' .. redis.call('ZCARD', KEYS[2]) .. ' ' .. #job
  local id = string.sub(redis.sha1hex(seed .. string.sub(job, 1, 4096)), 1, 24)
  local err = 'malformed job: payload of ' .. #job .. ' bytes is over server.max_payload_bytes ('
    .. max_payload .. ')'
  redis.call('ZADD', KEYS[2], now, '{"name":' .. cjson.encode(string.sub(queue, #prefix + 1))
    .. ',"id":"' .. id .. '","t":' .. now .. ',"args":{"malformed_payload":' .. cjson.encode(job)
    .. '},"fails":1,"err":' .. cjson.encode(err) .. ',"failed_at":' .. now .. '}')
  oversized = oversized + 1
end

local groups = (#KEYS - 3) / 6
for g = 1, groups do
  local base = 3 + 6 * (g - 1)
  local queue = KEYS[base + 1]
  local len = redis.call('LLEN', queue)
  if len > 0 and not redis.call('GET', KEYS[base + 3]) then
    local n = want
    if len < n then n = len end
    local cap = tonumber(redis.call('GET', KEYS[base + 6]))
    if cap and cap > 0 then
      -- as gocraft: a missing or non-numeric lock counts as room
      local lock = tonumber(redis.call('GET', KEYS[base + 4]))
      if lock and cap - lock < n then n = cap - lock end
    end
    if n > 0 then
      local jobs = {}
      local taken, bytes = 0, 0
      for _ = 1, n + 16 do  -- bounded: a queue of oversized entries is drained call by call
        local job = redis.call('RPOPLPUSH', queue, KEYS[base + 2])
        if not job then break end
        if max_payload > 0 and #job > max_payload then
          redis.call('LPOP', KEYS[base + 2])
          dead_letter(queue, job)
        else
          taken = taken + 1
          jobs[taken] = job
          bytes = bytes + #job
          if taken >= n or bytes >= max_batch then break end
        end
      end
      if taken > 0 then
        redis.call('INCRBY', KEYS[base + 4], taken)
        redis.call('HINCRBY', KEYS[base + 5], pool, taken)
        return {g, jobs}
      end
    end
  end
end
if oversized == 0 then
  redis.call('DEL', KEYS[3])
end
return {0, {}}

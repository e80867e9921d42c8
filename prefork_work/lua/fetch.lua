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
-- KEYS[4] = <p>pw:metrics                  (counters: outcomes per job name, histogram, ...)
-- KEYS[5] = <p>pw:status                   (status records of job types that ask for them)
-- KEYS[6] = <p>pw:status_expiry            (their expiry times, to prune the hash)
-- KEYS[7] = <p>pw:fence                    (pool ID -> highest call sequence seen; see below)
-- KEYS[7 + 6*(g-1) + 1..6] = group g, in the priority-sampled order of this call:
--   1 <p>jobs:<name>   2 <p>jobs:<name>:<poolID>:inprogress   3 <p>jobs:<name>:paused
--   4 <p>jobs:<name>:lock   5 <p>jobs:<name>:lock_info   6 <p>jobs:<name>:max_concurrency
-- ARGV[1] = pool ID
-- ARGV[2] = this call's sequence: an integer, strictly increasing over the pool's calls
-- ARGV[3] = how many jobs to fetch at most (0: only acknowledge)
-- ARGV[4] = max_payload_bytes (0: no limit): a larger entry is never handed to a worker; it
--           goes to <p>dead wrapped in a job {"name": <queue's job name>, "args":
--           {"malformed_payload": <the entry>}, "err": ...}, counted as a dead job
-- ARGV[5] = max bytes of one batch: the batch stops after the job that reaches it
-- ARGV[6] = how many wake tokens the wake list may hold (store/base.py WAKE_TOKENS_MAX)
-- ARGV[7] = number of acknowledgements A, followed by A records of 4 values:
--   group number g (the queue the job was fetched from, in this call's order),
--   raw job bytes exactly as fetched,
--   outcome (prefork_work/outcome.py Outcome): "s" success, "r" retry, "d" dead, "x" dropped
--            (skip_dead), "q" return unstarted to the front of its queue (and wake an idle
--            worker for it),
--   for "r"/"d": "<score> <re-serialized job>"; otherwise "".
-- then ARGV[i] = now (epoch seconds), ARGV[i+1] = status TTL in seconds, ARGV[i+2] = "1" to
--   count outcomes in <p>pw:metrics ("0": [server] metrics = false),
--   ARGV[i+3] = number of status records S, followed by S triples: the number k of the
--   acknowledgement it belongs to (1-based), the job id and the record's JSON, written when
--   acknowledgement k took its entry (so a reclaimed job's stale run writes nothing),
--   ARGV[j] = number of counter increments H, followed by H pairs (field of <p>pw:metrics,
--   increment): the worker's duration histogram of this batch, Redis errors it rode out.
--
-- Every acknowledgement that takes its entry (all outcomes but "q") counts in <p>pw:metrics:
-- processed:<name>, and for failures failed:<name> plus retried:/dead:/dropped:<name>; one
-- HINCRBY per distinct field per call, so the counters are exact and cost no round trip.
--
-- Locks are released only for entries still in the in-progress list: if a reaper already
-- moved the job back to its queue (and released its lock), the ack neither releases the
-- lock again (gocraft drifts here, W12) nor adds a retry/dead copy of a job that is queued.
--
-- Returns {g, {job bytes...}}: the group the jobs came from (0 when none) and the jobs, in
-- fetch order (oldest first); {-1, {}} for a call refused by the fence.
--
-- The fence: a call whose reply was lost may still reach Redis later (a healed partition, a
-- proxy flushing its buffer), after the worker recovered its in-progress lists, and would
-- leave jobs in a live pool's lists where no reaper looks. Every call carries a sequence;
-- the highest one seen is kept per pool in KEYS[7], and the worker's recovery raises it to
-- its lost call's sequence in the same script that reads the lists (lua/recover.lua). A
-- call at or below it is stale: it changes nothing at all (its reply was lost, so no worker
-- reads the refusal; the worker resends its acks with its next call anyway).
--
-- The wake list: when nothing could be fetched the list is cleared atomically; an idle worker
-- then blocks on it, and any job enqueued after this point pushes a fresh token.

local pool = ARGV[1]
local seen = tonumber(redis.call('HGET', KEYS[7], pool))
if seen and seen >= tonumber(ARGV[2]) then
  return {-1, {}}
end
redis.call('HSET', KEYS[7], pool, ARGV[2])
local want = tonumber(ARGV[3])
local max_payload = tonumber(ARGV[4])
local max_batch = tonumber(ARGV[5])
local wake_max = tonumber(ARGV[6])
local nacks = tonumber(ARGV[7])

local G0 = 7  -- keys before the first group
-- outcome -> (counter, number): counts are keyed by the number g * 4 + n, no string per job
local COUNTED = {s = 'processed', r = 'retried', d = 'dead', x = 'dropped'}
local CODE = {s = 0, r = 1, d = 2, x = 3}
local OUTCOME = {[0] = 's', [1] = 'r', [2] = 'd', [3] = 'x'}

local released = {}
local requeued = 0
local taken = {}  -- acknowledgement number -> true when it took its entry (if track)
local counts = {}  -- g * 4 + CODE[outcome] -> n
local i = 8
local count = ARGV[i + 4 * nacks + 2] == '1'  -- the arguments after the records
local track = tonumber(ARGV[i + 4 * nacks + 3]) > 0  -- status records to write
for k = 1, nacks do
  local g = tonumber(ARGV[i])
  local raw = ARGV[i + 1]
  local outcome = ARGV[i + 2]
  local extra = ARGV[i + 3]
  i = i + 4
  local base = G0 + 6 * (g - 1)
  if redis.call('LREM', KEYS[base + 2], -1, raw) > 0 then
    released[g] = (released[g] or 0) + 1
    if track then taken[k] = true end
    local code = CODE[outcome]
    if count and code then
      local c = g * 4 + code
      counts[c] = (counts[c] or 0) + 1
    end
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
  local base = G0 + 6 * (g - 1)
  redis.call('DECRBY', KEYS[base + 4], n)
  redis.call('HINCRBY', KEYS[base + 5], pool, -n)
end
if requeued > 0 then
  -- jobs handed back (a slow job's batch, a stopping worker): another worker takes them now
  for _ = 1, math.min(requeued, wake_max) do redis.call('LPUSH', KEYS[3], '1') end
  redis.call('LTRIM', KEYS[3], 0, wake_max - 1)
end

-- counters: the job name is the group's queue key minus "<p>jobs:"
local prefix_len = #KEYS[4] - #'pw:metrics' + #'jobs:'
local failed = {}
for c, n in pairs(counts) do
  local outcome, g = OUTCOME[c % 4], math.floor(c / 4)
  local name = string.sub(KEYS[G0 + 6 * (g - 1) + 1], prefix_len + 1)
  redis.call('HINCRBY', KEYS[4], 'processed:' .. name, n)
  if outcome ~= 's' then
    redis.call('HINCRBY', KEYS[4], COUNTED[outcome] .. ':' .. name, n)
    failed[name] = (failed[name] or 0) + n
  end
end
for name, n in pairs(failed) do
  redis.call('HINCRBY', KEYS[4], 'failed:' .. name, n)
end

local now = tonumber(ARGV[i])
local ttl = tonumber(ARGV[i + 1])
local nstatus = tonumber(ARGV[i + 3])
i = i + 4
if nstatus > 0 then
  local written = 0
  for _ = 1, nstatus do
    if taken[tonumber(ARGV[i])] then
      redis.call('HSET', KEYS[5], ARGV[i + 1], ARGV[i + 2])
      redis.call('ZADD', KEYS[6], now + ttl, ARGV[i + 1])
      written = written + 1
    end
    i = i + 3
  end
  -- prune at most twice what was written (and a few more), so the hash never outgrows
  -- the records of the last TTL while no call ever does unbounded work
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 2 * written + 8)
  if #expired > 0 then
    redis.call('HDEL', KEYS[5], unpack(expired))
    redis.call('ZREM', KEYS[6], unpack(expired))
  end
end
local nincr = tonumber(ARGV[i])
for _ = 1, nincr do
  redis.call('HINCRBY', KEYS[4], ARGV[i + 1], ARGV[i + 2])
  i = i + 2
end

if want <= 0 then
  return {0, {}}
end

-- An entry over max_payload_bytes, taken off the in-progress list it was just moved to.
local oversized = 0
local function dead_letter(queue, job)
  local at = tonumber(redis.call('TIME')[1])
  local name = string.sub(queue, prefix_len + 1)
  local seed = pool .. ' ' .. at .. ' ' .. redis.call('ZCARD', KEYS[2]) .. ' ' .. #job
  local id = string.sub(redis.sha1hex(seed .. string.sub(job, 1, 4096)), 1, 24)
  local err = 'malformed job: payload of ' .. #job .. ' bytes is over server.max_payload_bytes ('
    .. max_payload .. ')'
  redis.call('ZADD', KEYS[2], at, '{"name":' .. cjson.encode(name)
    .. ',"id":"' .. id .. '","t":' .. at .. ',"args":{"malformed_payload":' .. cjson.encode(job)
    .. '},"fails":1,"err":' .. cjson.encode(err) .. ',"failed_at":' .. at .. '}')
  if count then  -- counted as any job that went to dead
    for _, field in ipairs({'processed:', 'failed:', 'dead:'}) do
      redis.call('HINCRBY', KEYS[4], field .. name, 1)
    end
  end
  oversized = oversized + 1
end

local groups = (#KEYS - G0) / 6
for g = 1, groups do
  local base = G0 + 6 * (g - 1)
  local queue = KEYS[base + 1]
  local len = redis.call('LLEN', queue)
  if len > 0 and not redis.call('GET', KEYS[base + 3]) then
    local n = want
    if len < n then n = len end
    local cap = tonumber(redis.call('GET', KEYS[base + 6]))
    if cap and cap > 0 then
      -- as gocraft: a missing or non-numeric lock counts as room, i.e. as 0 held (not as
      -- no cap: a batch of several jobs would then go past max_concurrency)
      local lock = tonumber(redis.call('GET', KEYS[base + 4])) or 0
      if cap - lock < n then n = cap - lock end
    end
    if n > 0 then
      local jobs = {}
      local kept, bytes = 0, 0
      for _ = 1, n + 16 do  -- bounded: a queue of oversized entries is drained call by call
        local job = redis.call('RPOPLPUSH', queue, KEYS[base + 2])
        if not job then break end
        if max_payload > 0 and #job > max_payload then
          redis.call('LPOP', KEYS[base + 2])
          dead_letter(queue, job)
        else
          kept = kept + 1
          jobs[kept] = job
          bytes = bytes + #job
          if kept >= n or bytes >= max_batch then break end
        end
      end
      if kept > 0 then
        redis.call('INCRBY', KEYS[base + 4], kept)
        redis.call('HINCRBY', KEYS[base + 5], pool, kept)
        return {g, jobs}
      end
    end
  end
end
if oversized == 0 then
  redis.call('DEL', KEYS[3])
end
return {0, {}}

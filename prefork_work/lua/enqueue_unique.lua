-- Enqueue a unique job (gocraft's redisLuaEnqueueUnique / redisLuaEnqueueUniqueIn).
--
-- KEYS[1] = <p>jobs:<name> (plain variant) or <p>scheduled ("in" variant)
-- KEYS[2] = the unique key, <p>unique:<name>:<Go JSON of the map>\n
-- KEYS[3] = <p>pw:wake (plain variant only wakes idle workers; ignored by the "in" variant)
-- ARGV[1] = job JSON
-- ARGV[2] = value stored under the unique key: "1" (args-based) or the job JSON (by-key)
-- ARGV[3] = how many wake tokens the wake list may hold
-- ARGV[4] = run-at epoch seconds for the "in" variant; absent for the plain variant
--
-- Unique keys live 24 h (86400 s, gocraft's TTL), set here only.
--
-- Returns "ok" when the job was enqueued, "dup" when the key already existed (its value is
-- then overwritten and its TTL restarted, as gocraft does; the queued entry is unchanged).

if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', '86400') then
  if ARGV[4] then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  else
    redis.call('LPUSH', KEYS[1], ARGV[1])
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
  end
  return 'ok'
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', '86400')
return 'dup'

"""The Lua scripts the Redis store runs: each one atomic on the server, one round trip from the gateway.

Counters: a sliding minute is a hash of one-second buckets (field: the bucket, value: the amount), those
older than the oldest bucket still counted deleted as they are read; a day or a month is a string holding
its total, under a key naming the window; calls in flight are a sorted set of call ids scored by when their
lease lapses. Each admitted call leaves a marker key, which its settlement deletes.
"""

_USED = """
local function used_of(key, kind, oldest, now)
  if kind == 'm' then
    local fields = redis.call('HGETALL', key)
    local u = 0
    for j = 1, #fields, 2 do
      if tonumber(fields[j]) < oldest then redis.call('HDEL', key, fields[j])
      else u = u + tonumber(fields[j + 1]) end
    end
    return u
  elseif kind == 'f' then
    return tonumber(redis.call('GET', key) or '0')
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
"""
# KEYS: the call's marker, then one counter per charge. ARGV: bucket, oldest bucket, now, marker ttl,
# calendar grace, call id; then kind, limit, amount, slot of each charge.
ADMIT = (
    _USED
    + """
local function retry_bucket(key, oldest, used, need, limit)
  local fields, live = redis.call('HGETALL', key), {}
  for j = 1, #fields, 2 do
    local b = tonumber(fields[j])
    if b >= oldest then live[#live + 1] = {b, tonumber(fields[j + 1])} end
  end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  for _, pair in ipairs(live) do
    used = used - pair[2]
    if used + need <= limit then return pair[1] end
  end
  return -1
end
local oldest, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local reply = {0, -1}
for i = 2, #KEYS do
  local at = 6 + (i - 2) * 4
  local kind, limit, amount = ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local used = used_of(KEYS[i], kind, oldest, now)
  reply[i + 1] = used
  if reply[1] == 0 and used + math.max(amount, 1) > limit then
    reply[1] = i - 1
    if kind == 'm' then reply[2] = retry_bucket(KEYS[i], oldest, used, math.max(amount, 1), limit) end
  end
end
if reply[1] > 0 then return reply end
for i = 2, #KEYS do
  local at = 6 + (i - 2) * 4
  local kind, amount, slot = ARGV[at + 1], ARGV[at + 3], ARGV[at + 4]
  if kind == 'm' then
    redis.call('HINCRBY', KEYS[i], ARGV[1], amount)
    redis.call('EXPIRE', KEYS[i], 62)
  elseif kind == 'f' then
    redis.call('INCRBY', KEYS[i], amount)
    redis.call('EXPIREAT', KEYS[i], tonumber(slot) + tonumber(ARGV[5]))
  else
    redis.call('ZADD', KEYS[i], slot, ARGV[6])
    redis.call('EXPIREAT', KEYS[i], slot)
  end
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[4])
return reply
"""
)
# KEYS: the call's marker, then the counters to correct. ARGV: oldest bucket, call id; then kind, delta and
# slot of each.
SETTLE = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
local oldest = tonumber(ARGV[1])
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 3
  local kind, delta, slot = ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3]
  if kind == 'm' then
    if tonumber(slot) >= oldest and redis.call('HEXISTS', KEYS[i], slot) == 1 then
      if redis.call('HINCRBY', KEYS[i], slot, delta) < 0 then redis.call('HSET', KEYS[i], slot, 0) end
    end
  elseif kind == 'f' then
    if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], delta) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  else
    redis.call('ZREM', KEYS[i], ARGV[2])
  end
end
return 1
"""
# KEYS: counters. ARGV: oldest bucket, now; then the kind of each.
READ = (
    _USED
    + """
local reply = {}
for i = 1, #KEYS do reply[i] = used_of(KEYS[i], ARGV[2 + i], tonumber(ARGV[1]), tonumber(ARGV[2])) end
return reply
"""
)

"""The Lua scripts the Redis store runs: each one atomic on the server, one round trip from the gateway.

Counters: a sliding minute is a hash of one-second buckets (field: the bucket, value: the amount) that also
keeps its running total and its oldest bucket, so an admission reads two fields, not sixty-one buckets; the
buckets that have left are deleted (and the total counted again) once the oldest has left, at most once a
second. A day or a month is a string holding its total, under a key naming the window; calls in flight are a
sorted set of call ids scored by when their lease lapses. Each admitted call leaves a marker, which its
settlement removes: its id in its first calls-in-flight set, or, for a call without one, a marker key. Values
the scripts work out are written with `%d`: a Lua number given to a command as it is may be written in
exponent form, which no counter command reads.
"""

# The total and the oldest bucket of a sliding minute are fields numbered below every bucket, so a gateway
# of the version before, which sums the buckets counted, takes them for buckets long gone and deletes them
# (this version then counts the buckets again).
_FIELDS = """
local TOTAL, FIRST = '-1', '-2'
"""
_USED = (
    _FIELDS
    + """
local function recount(key, oldest)
  local fields, total, first = redis.call('HGETALL', key), 0, false
  for j = 1, #fields, 2 do
    local b = tonumber(fields[j])
    if b < oldest then redis.call('HDEL', key, fields[j])
    else
      total = total + tonumber(fields[j + 1])
      if not first or b < first then first = b end
    end
  end
  if first then
    redis.call('HSET', key, TOTAL, string.format('%d', total), FIRST, string.format('%d', first))
  end
  return total, first
end
local function sliding_used(key, oldest)
  local kept = redis.call('HMGET', key, TOTAL, FIRST)
  if kept[1] and kept[2] and tonumber(kept[2]) >= oldest then return tonumber(kept[1]), tonumber(kept[2]) end
  return recount(key, oldest)
end
local function used_of(key, kind, oldest, now)
  if kind == 'm' then return sliding_used(key, oldest) end
  if kind == 'f' then return tonumber(redis.call('GET', key) or '0') end
  return redis.call('ZCOUNT', key, '(' .. now, '+inf')  -- the leases lapsed are left to settlements
end
"""
)
# KEYS: one counter per charge, then the call's marker. ARGV: bucket, oldest bucket, now, marker ttl,
# calendar grace; kind, limit and slot of each charge; the call id; the amount of each charge. (What is the
# same for every call of a second comes first: the store writes it once a second.)
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
-- A new bucket, day or month (the amount is all it holds) is when its key's expiry is set.
local function charge(key, kind, amount, slot, first, call)
  if kind == 'm' then
    if redis.call('HINCRBY', key, ARGV[1], amount) == tonumber(amount) then redis.call('EXPIRE', key, 62) end
    redis.call('HINCRBY', key, TOTAL, amount)
    if not first or tonumber(ARGV[1]) < first then redis.call('HSET', key, FIRST, ARGV[1]) end
  elseif kind == 'f' then
    if redis.call('INCRBY', key, amount) == tonumber(amount) then
      redis.call('EXPIREAT', key, tonumber(slot) + tonumber(ARGV[5]))
    end
  else
    redis.call('ZADD', key, slot, call)
    redis.call('EXPIREAT', key, slot)
  end
end
local n, oldest, now = #KEYS - 1, tonumber(ARGV[2]), ARGV[3]
local call = ARGV[6 + 3 * n]
local reply, firsts = {0, -1}, {}
for i = 1, n do
  local at, amount = 3 + 3 * i, tonumber(ARGV[6 + 3 * n + i])
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local used, first = used_of(KEYS[i], kind, oldest, now)
  reply[i + 2], firsts[i] = used, first
  if reply[1] == 0 and used + math.max(amount, 1) > limit then
    reply[1] = i
    if kind == 'm' then reply[2] = retry_bucket(KEYS[i], oldest, used, math.max(amount, 1), limit) end
  end
end
if reply[1] > 0 then return reply end
local held = false  -- in a calls-in-flight set, which marks it
for i = 1, n do
  local at = 3 + 3 * i
  charge(KEYS[i], ARGV[at], ARGV[6 + 3 * n + i], ARGV[at + 2], firsts[i], call)
  held = held or ARGV[at] == 'c'
end
if not held then redis.call('SET', KEYS[n + 1], '1', 'EX', ARGV[4]) end
return reply
"""
)
# KEYS: the call's marker key, then the counters to correct (every calls-in-flight set of the call among
# them). ARGV: oldest bucket, now, call id; then kind, delta and slot of each. The leases of calls in flight
# that lapsed (their replica gone) leave here.
SETTLE = (
    _FIELDS
    + """
local function correct(key, slot, delta)
  local held = tonumber(redis.call('HGET', key, slot) or false)
  if not held then return end
  if held + delta < 0 then delta = -held end
  if delta ~= 0 then
    redis.call('HINCRBY', key, slot, string.format('%d', delta))
    redis.call('HINCRBY', key, TOTAL, string.format('%d', delta))
  end
end
-- Remove the call's marker: its id in its first calls-in-flight set (that set's index), else its marker key.
local function unmark()
  for i = 2, #KEYS do
    if ARGV[4 + (i - 2) * 3] == 'c' then return redis.call('ZREM', KEYS[i], ARGV[3]) == 1, i end
  end
  return redis.call('DEL', KEYS[1]) == 1, 0
end
local marked, marking = unmark()
if not marked then return 0 end
local oldest = tonumber(ARGV[1])
for i = 2, #KEYS do
  local at = 3 + (i - 2) * 3
  local kind, delta, slot = ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3]
  if kind == 'm' then
    if tonumber(slot) >= oldest then correct(KEYS[i], slot, delta) end
  elseif kind == 'f' then
    if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], ARGV[at + 2]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  else
    if i ~= marking then redis.call('ZREM', KEYS[i], ARGV[3]) end
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[2])
  end
end
return 1
"""
)
# KEYS: counters. ARGV: oldest bucket, now; then the kind of each.
READ = (
    _USED
    + """
local reply = {}
for i = 1, #KEYS do reply[i] = used_of(KEYS[i], ARGV[2 + i], tonumber(ARGV[1]), ARGV[2]) end
return reply
"""
)

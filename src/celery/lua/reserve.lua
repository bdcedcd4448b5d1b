-- Reserve up to ARGV[1] messages of one kombu queue under a lease of ARGV[2] ms.
-- KEYS: 1 unacked (HASH tag -> "list_index\nraw"), 2 unacked index (ZSET tag -> lease
-- deadline ms), 3 delayed (ZSET "tag\nlist_index\nraw" -> eta ms), 4 dead (LIST),
-- 5 tag counter, 6.. kombu's priority lists, most urgent first.
-- ARGV: 1 max, 2 lease ms, 3 work limit, 4 "1" to adopt ARGV[6] (an entry a BRPOP already
-- took from list ARGV[5]) before popping more.
-- Returns {taken = {tag, list_index, raw, ...}, expired = {tag, stored, ...}, wake_ms}:
-- expired leases are not touched here; the client rewrites and restores them (settle.lua).
local unacked, index, delayed, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local nlists = #KEYS - 5
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local limit = tonumber(ARGV[3])

local function list_of(i)
  i = tonumber(i) or 1
  if i < 1 then i = 1 end
  if i > nlists then i = nlists end
  return i
end

-- Delayed messages whose eta has passed join the back of their list, like a new publish.
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZREM', delayed, member)
  local a = string.find(member, '\n', 1, true)
  local b = a and string.find(member, '\n', a + 1, true)
  if b then
    local i = list_of(string.sub(member, a + 1, b - 1))
    redis.call('LPUSH', KEYS[5 + i], string.sub(member, b + 1))
  end
end

local expired = {}
for _, tag in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, limit)) do
  local stored = redis.call('HGET', unacked, tag)
  if stored then
    expired[#expired + 1] = tag
    expired[#expired + 1] = stored
  else
    redis.call('ZREM', index, tag)
  end
end

local taken = {}
local n = 0
local function take(i, raw)
  local tag = tostring(redis.call('INCR', seq))
  redis.call('HSET', unacked, tag, i .. '\n' .. raw)
  redis.call('ZADD', index, deadline, tag)
  taken[#taken + 1] = tag
  taken[#taken + 1] = i
  taken[#taken + 1] = raw
  n = n + 1
end
if ARGV[4] == '1' then
  take(list_of(ARGV[5]), ARGV[6])
end
for i = 1, nlists do
  while n < max do
    local raw = redis.call('RPOP', KEYS[5 + i])
    if not raw then break end
    take(i, raw)
  end
  if n >= max then break end
end

local wake = -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then wake = math.max(0, tonumber(first[2]) - now) end
first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
if first[2] then
  local w = math.max(0, tonumber(first[2]) - now)
  if wake < 0 or w < wake then wake = w end
end
return {taken, expired, wake}

-- Put reservations back at the front of their list, unchanged (a worker that did not
-- start them). KEYS as reserve.lua. ARGV: tags. Returns per tag 1 if still reserved.
local nlists = #KEYS - 5
local out = {}
for n, tag in ipairs(ARGV) do
  local stored = redis.call('HGET', KEYS[1], tag)
  if stored then
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
    local a = string.find(stored, '\n', 1, true)
    local i = math.min(math.max(tonumber(string.sub(stored, 1, a - 1)) or 1, 1), nlists)
    redis.call('RPUSH', KEYS[5 + i], string.sub(stored, a + 1))
    out[n] = 1
  else
    out[n] = 0
  end
end
return out

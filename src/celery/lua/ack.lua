-- Acknowledge reservations: forget them. KEYS: 1 unacked, 2 unacked index. ARGV: tags.
-- Returns per tag 1 if it was still reserved, else 0.
local out = {}
for i, tag in ipairs(ARGV) do
  out[i] = redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
end
return out

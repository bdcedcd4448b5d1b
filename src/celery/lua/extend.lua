-- Extend leases to ARGV[1] ms from now. KEYS: 1 unacked, 2 unacked index. ARGV: 2.. tags.
-- Returns per tag 1 if it was still reserved, else 0.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], deadline, ARGV[i])
    out[i - 1] = 1
  else
    out[i - 1] = 0
  end
end
return out

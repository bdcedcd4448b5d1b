-- Remove every ready and delayed message of a kombu queue. KEYS as reserve.lua.
-- Returns how many were removed.
local n = redis.call('ZCARD', KEYS[3])
redis.call('DEL', KEYS[3])
for i = 6, #KEYS do
  n = n + redis.call('LLEN', KEYS[i])
  redis.call('DEL', KEYS[i])
end
return n

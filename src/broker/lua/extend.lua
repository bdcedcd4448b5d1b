-- extend: sets the lease deadline of reserved messages to now + lease_ms.
-- KEYS: the queue's 8 keys.
-- ARGV: lease_ms, then pairs of id, token.
-- Returns one 1 (extended) or 0 (lease no longer held) per pair.
local k = celeriac_keys(1)
local deadline = celeriac_now_ms() + tonumber(ARGV[1])
local res = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if celeriac_holds(redis.call('HGET', k.meta, id), ARGV[i + 1]) then
    redis.call('ZADD', k.active, 'XX', deadline, id)
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res

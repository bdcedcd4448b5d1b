-- ack: removes reserved messages whose lease token still matches.
-- KEYS: the queue's 8 keys.
-- ARGV: pairs of id, token.
-- Returns one 1 (acked) or 0 (lease no longer held) per pair.
local k = celeriac_keys(1)
local n = #ARGV / 2
local ids, res, done = {}, {}, {}
for i = 1, n do
  ids[i] = ARGV[2 * i - 1]
end
local metas = redis.call('HMGET', k.meta, unpack(ids))
for i = 1, n do
  if celeriac_holds(metas[i], ARGV[2 * i]) then
    res[i] = 1
    done[#done + 1] = ids[i]
  else
    res[i] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', k.active, unpack(done))
  redis.call('HDEL', k.msg, unpack(done))
  redis.call('HDEL', k.meta, unpack(done))
end
return res

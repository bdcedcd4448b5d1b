-- purge: removes up to `limit` ready, then delayed, messages (never reserved ones).
-- KEYS: the queue's 8 keys.
-- ARGV: limit.
-- Returns how many were removed; the caller repeats until 0.
local k = celeriac_keys(1)
local limit = tonumber(ARGV[1])
local removed = 0
for _, set in ipairs({ k.ready, k.delayed }) do
  if removed >= limit then
    break
  end
  local ids = redis.call('ZRANGE', set, 0, limit - removed - 1)
  if #ids > 0 then
    redis.call('ZREM', set, unpack(ids))
    redis.call('HDEL', k.msg, unpack(ids))
    redis.call('HDEL', k.meta, unpack(ids))
    removed = removed + #ids
  end
end
return removed

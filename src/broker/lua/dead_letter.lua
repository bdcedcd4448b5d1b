-- dead_letter: moves a reserved message (lease token must match) to the dead-letter list.
-- KEYS: the queue's 8 keys.
-- ARGV: id, token, reason, max_dead (the list is trimmed to this many, oldest dropped).
-- Returns 1 (dead-lettered) or 0 (lease no longer held).
local k = celeriac_keys(1)
local id = ARGV[1]
local p, a, t = celeriac_meta_parse(redis.call('HGET', k.meta, id))
if t == 0 or t ~= tonumber(ARGV[2]) then
  return 0
end
local body = redis.call('HGET', k.msg, id) or ''
redis.call('ZREM', k.active, id)
redis.call('HDEL', k.msg, id)
redis.call('HDEL', k.meta, id)
redis.call('LPUSH', k.dead, cjson.encode({
  id = id, reason = ARGV[3], at = celeriac_now_ms(), attempt = a, priority = p, body = body,
}))
redis.call('LTRIM', k.dead, 0, tonumber(ARGV[4]) - 1)
return 1

-- claim: acquire the beat leader lease if free, or extend it if this token holds it.
-- KEYS[1] leader (STRING "token:epoch", with a PX expiry), KEYS[2] epoch counter.
-- ARGV[1] token, ARGV[2] ttl in ms.
-- Returns {code, epoch, ttl_left_ms}: code 2 = acquired (new epoch), 1 = renewed,
-- 0 = held by another token (ttl_left_ms = its remaining lease).
local cur = redis.call('GET', KEYS[1])
if cur then
  local tok, ep = string.match(cur, '^(.*):(%d+)$')
  if tok == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(ep), 0}
  end
  return {0, 0, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
return {2, epoch, 0}

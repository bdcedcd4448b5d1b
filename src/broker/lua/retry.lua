-- retry: takes reserved messages back from active: to delayed (eta in the future) or to
-- ready (back of the band, or front with `front` = 1), optionally counting an attempt and
-- remembering a reason. Used for retry-later (bump 1) and release (bump 0, front 1).
-- KEYS: the queue's 8 keys.
-- ARGV: eta_ms (0 = now), bump (0/1), front (0/1), reason ('' = keep the previous one),
--       then pairs of id, token.
-- Returns one 1 (moved) or 0 (lease no longer held) per pair.
local k = celeriac_keys(1)
local now = celeriac_now_ms()
local eta = tonumber(ARGV[1])
local bump = tonumber(ARGV[2])
local front = ARGV[3] == '1'
local reason = ARGV[4]
local res = {}
local moved = false
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local p, a, t, e = celeriac_meta_parse(redis.call('HGET', k.meta, id))
  if t > 0 and t == tonumber(ARGV[i + 1]) then
    if reason ~= '' then
      e = reason
    end
    redis.call('HSET', k.meta, id, celeriac_meta(p, a + bump, 0, e))
    redis.call('ZREM', k.active, id)
    if eta > now then
      redis.call('ZADD', k.delayed, eta, id)
    elseif front then
      redis.call('ZADD', k.ready, celeriac_score_front(p), id)
    else
      redis.call('ZADD', k.ready, celeriac_score_back(k, p), id)
    end
    res[#res + 1] = 1
    moved = true
  else
    res[#res + 1] = 0
  end
end
if moved then
  -- Also for delayed ones: a blocked reserver recomputes when to wake up.
  celeriac_signal(k)
end
return res

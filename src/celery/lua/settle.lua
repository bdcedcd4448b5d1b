-- Replace one reservation by its next state, if it is still reserved. KEYS as reserve.lua.
-- ARGV: 1 mode, 2 tag, 3 payload, 4 list index, 5 score (eta ms, for delay), 6 dead-letter
-- limit. Modes: restore (front of its list), delay (delayed set until the score),
-- dead (the dead-letter list, payload being the dead-letter record). Returns 1 or 0.
local tag = ARGV[2]
local mode = ARGV[1]
if mode ~= 'restore' and mode ~= 'delay' and mode ~= 'dead' then
  return redis.error_reply('unknown settle mode ' .. mode)
end
if redis.call('HDEL', KEYS[1], tag) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], tag)
local nlists = #KEYS - 5
local i = math.min(math.max(tonumber(ARGV[4]) or 1, 1), nlists)
if mode == 'restore' then
  redis.call('RPUSH', KEYS[5 + i], ARGV[3])
elseif mode == 'delay' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), tag .. '\n' .. i .. '\n' .. ARGV[3])
elseif mode == 'dead' then
  redis.call('LPUSH', KEYS[4], ARGV[3])
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
end
return 1

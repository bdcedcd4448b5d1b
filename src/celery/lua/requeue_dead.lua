-- Put one dead letter back on its list. KEYS as reserve.lua. ARGV: 1 the dead-letter
-- record as stored, 2 list index, 3 the message. Returns 1 if the record was still there.
if redis.call('LREM', KEYS[4], 1, ARGV[1]) == 0 then
  return 0
end
local nlists = #KEYS - 5
local i = math.min(math.max(tonumber(ARGV[2]) or 1, 1), nlists)
redis.call('LPUSH', KEYS[5 + i], ARGV[3])
return 1

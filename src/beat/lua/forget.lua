-- forget: drop schedules' records of their last decided tick and of when they were armed,
-- keeping their last message (so `overlap: skip` still sees a run that is going on).
-- KEYS[1] last (HASH schedule -> "NOMINAL_MS[\tQUEUE\tID\tMESSAGE_NOMINAL_MS]", see fire.lua)
-- KEYS[2] armed (HASH schedule -> Unix ms); ARGV: schedules.
for i = 1, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    local tail = string.match(rec, '^%d*(\t.*)$')
    if tail then
      redis.call('HSET', KEYS[1], ARGV[i], tail)
    else
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
end
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 0

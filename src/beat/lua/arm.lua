-- arm: record when a beat first ran each schedule (kept if already recorded).
-- KEYS[1] armed (HASH schedule -> Unix ms); ARGV[1] the instant in ms; ARGV[2..] schedules.
-- Returns how many were newly recorded.
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1])
end
return n

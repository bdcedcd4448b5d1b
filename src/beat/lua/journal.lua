-- journal: append beat decisions to the journal streams, many per call.
-- KEYS[1] the global journal (STREAM, trimmed approximately to ARGV[1] entries).
-- ARGV[1] global maxlen; ARGV[2] per-schedule maxlen (exact); ARGV[3] key prefix; then 7 per
-- entry: at (ms), schedule ('' for none), event, nominal, fire_id, detail, beat.
-- An entry about a schedule also goes to its own stream PREFIX .. 'beat:journal:' .. schedule.
-- Returns the number of entries written.
local n = 0
for b = 4, #ARGV, 7 do
  local at, schedule, event, nominal = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local fire_id, detail, beat = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'at', at, 'schedule', schedule,
    'event', event, 'nominal', nominal, 'fire_id', fire_id, 'detail', detail, 'beat', beat)
  if schedule ~= '' then
    redis.call('XADD', ARGV[3] .. 'beat:journal:' .. schedule, 'MAXLEN', ARGV[2], '*', 'at', at,
      'schedule', schedule, 'event', event, 'nominal', nominal, 'fire_id', fire_id,
      'detail', detail, 'beat', beat)
  end
  n = n + 1
end
return n

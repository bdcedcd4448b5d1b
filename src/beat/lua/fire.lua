-- fire: fire a batch of ticks, each atomically and exactly once.
-- (Concatenated after the broker's enqueue_lib.lua.)
--
-- KEYS[1] leader (STRING "token:epoch")      KEYS[2] last fired (HASH schedule -> nominal ms)
-- KEYS[3] last message (HASH schedule -> "queue\tid\tnominal_ms")
-- KEYS[4] paused (SET of schedules)          KEYS[5] journal (STREAM, all decisions)
-- then 8 keys per queue used by the batch (QueueKeys::all order), queue i at 6 + 8 * i.
-- ARGV[1] expected leader value "token:epoch"; ARGV[2] key prefix; ARGV[3] journal maxlen;
-- ARGV[4] per-schedule journal maxlen; ARGV[5] beat id; ARGV[6] n;
-- then 12 per fire: schedule, nominal_ms, remember_ms, queue index (0-based), queue name,
-- id, priority, eta_ms, body, flags ("o": overlap skip, "c": catch-up), fire_id, nominal text.
-- Returns one {code, detail} per fire: 1 fired, 2 already fired, 3 skipped (overlap; detail =
-- running id), 4 paused, 0 not the leader.
local F = 12
local n = tonumber(ARGV[6])
local out = {}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  for i = 1, n do out[i] = {0, ''} end
  return out
end
local prefix = ARGV[2]
local jmax = ARGV[3]
local smax = ARGV[4]
local beat = ARGV[5]
local now = celeriac_now_ms()
local signalled = {}

local function journal(schedule, event, nominal_text, fire_id, detail, also_schedule)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', jmax, '*', 'at', now, 'schedule', schedule,
    'event', event, 'nominal', nominal_text, 'fire_id', fire_id, 'detail', detail, 'beat', beat)
  if also_schedule then
    redis.call('XADD', prefix .. 'beat:journal:' .. schedule, 'MAXLEN', smax, '*', 'at', now,
      'schedule', schedule, 'event', event, 'nominal', nominal_text, 'fire_id', fire_id,
      'detail', detail, 'beat', beat)
  end
end

for i = 0, n - 1 do
  local b = 7 + i * F
  local schedule, nominal = ARGV[b], tonumber(ARGV[b + 1])
  local remember, qi, qname = ARGV[b + 2], tonumber(ARGV[b + 3]), ARGV[b + 4]
  local id, priority, eta, body = ARGV[b + 5], tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]), ARGV[b + 8]
  local flags, fire_id, nominal_text = ARGV[b + 9], ARGV[b + 10], ARGV[b + 11]
  local last = redis.call('HGET', KEYS[2], schedule)
  if last and tonumber(last) >= nominal then
    out[i + 1] = {2, ''}
  elseif not redis.call('SET', prefix .. 'fire:' .. schedule .. ':' .. ARGV[b + 1], '1', 'NX', 'PX', remember) then
    out[i + 1] = {2, ''}
  elseif redis.call('SISMEMBER', KEYS[4], schedule) == 1 then
    redis.call('HSET', KEYS[2], schedule, nominal)
    journal(schedule, 'paused', nominal_text, fire_id, 'schedule is paused', true)
    out[i + 1] = {4, ''}
  else
    local running = nil
    if string.find(flags, 'o', 1, true) then
      local cur = redis.call('HGET', KEYS[3], schedule)
      if cur then
        local q, rid = string.match(cur, '^(.-)\t(.-)\t')
        if q and redis.call('HEXISTS', prefix .. '{q:' .. q .. '}:msg', rid) == 1 then
          running = rid
        end
      end
    end
    if running then
      redis.call('HSET', KEYS[2], schedule, nominal)
      journal(schedule, 'skipped_overlap', nominal_text, fire_id,
        'previous run ' .. running .. ' still queued or running', true)
      out[i + 1] = {3, running}
    else
      local k = celeriac_keys(6 + qi * 8)
      local r = celeriac_enqueue(k, now, id, priority, 0, eta, body)
      if r == 1 and not signalled[qi] then
        celeriac_signal(k)
        signalled[qi] = true
      end
      redis.call('HSET', KEYS[2], schedule, nominal)
      redis.call('HSET', KEYS[3], schedule, qname .. '\t' .. id .. '\t' .. nominal)
      local event = 'fired'
      if string.find(flags, 'c', 1, true) then event = 'caught_up' end
      journal(schedule, event, nominal_text, fire_id, 'message ' .. id .. ' on ' .. qname, event ~= 'fired')
      out[i + 1] = {1, ''}
    end
  end
end
return out

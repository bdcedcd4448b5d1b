-- fire: fire a batch of ticks, each atomically and exactly once.
-- (Concatenated after the broker's enqueue_lib.lua.)
--
-- KEYS[1] leader (STRING "token:epoch")      KEYS[2] last fired (HASH schedule -> nominal ms)
-- KEYS[3] last message (HASH schedule -> "queue\tid\tnominal_ms")
-- KEYS[4] paused (SET of schedules)          KEYS[5] journal (STREAM, all decisions)
-- then 8 keys per queue used by the batch (QueueKeys::all order), queue i at 6 + 8 * i.
-- ARGV[1] expected leader value "token:epoch"; ARGV[2] key prefix; ARGV[3] journal maxlen;
-- ARGV[4] per-schedule journal maxlen; ARGV[5] beat id; ARGV[6] n (fires); ARGV[7] nq
-- (queues); then the nq queue names (queue i's keys are the i-th group of 8 KEYS);
-- then 4 per fire: schedule, message id, message body, and
-- "nominal_ms remember_ms queue_index priority eta_ms flags" (flags: "o" overlap skip,
-- "c" catch-up; may be empty). Few arguments per fire: each one costs Redis a parse and an
-- allocation twice (as a Redis string and as a Lua string).
-- Journal entries written here carry the nominal instant in Unix ms (the reader formats it).
-- Returns one value per fire: 1 fired, 2 already fired, 4 paused, 0 not the leader, or a
-- string (the running message id) when skipped because of overlap.
--
-- Exactly once per tick: a tick fires only if the schedule's last fired nominal instant is
-- older AND its marker is new. Markers are fields of one hash per nominal instant,
-- `beat:fired:NOMINAL_MS` (field = schedule, expiring after `remember`): the same check as a
-- `SET fire:SCHEDULE:NOMINAL NX` key per tick, but a wave of ticks sharing an instant costs
-- one HMGET and one HSET instead of one command per tick.
--
-- Cost: a wave of thousands of ticks is the common case (every minute cron due at :00).
-- Each redis.call from Lua costs microseconds beyond the command itself, so the routine path
-- makes none per fire: the last-fired and marker reads, the message bodies, metas and
-- ready-queue insertions, the last-fired/last-message records and the journal are one
-- command (or a few) per batch. Routine fires are journaled as ONE stream entry per batch
-- (`ticks`: one line per fire); exceptional decisions (paused, skipped, caught up) keep an
-- entry each, in the global and the schedule's own stream.
local F = 4
local n = tonumber(ARGV[6])
local nq = tonumber(ARGV[7])
local B = 8 + nq          -- first argument of the first fire
local out = {}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  for i = 1, n do out[i] = 0 end
  return out
end
local prefix = ARGV[2]
local jmax = ARGV[3]
local smax = ARGV[4]
local beat = ARGV[5]
local now = celeriac_now_ms()

local function journal(schedule, event, nominal_ms, detail)
  redis.call('XADD', KEYS[5], '*', 'at', now, 'schedule', schedule,
    'event', event, 'nominal', nominal_ms, 'detail', detail, 'beat', beat)
  redis.call('XADD', prefix .. 'beat:journal:' .. schedule, 'MAXLEN', smax, '*', 'at', now,
    'schedule', schedule, 'event', event, 'nominal', nominal_ms, 'detail', detail, 'beat', beat)
end

-- Parse the per-fire parameters once, into parallel arrays (no table per fire).
local names, P_nom, P_t, P_rem, P_qi, P_pri, P_eta, P_flags = {}, {}, {}, {}, {}, {}, {}, {}
for i = 0, n - 1 do
  local b = B + i * F
  names[i + 1] = ARGV[b]
  local t, remember, qi, p, eta, flags = string.match(ARGV[b + 3], '^(%d+) (%d+) (%d+) (%d+) (%d+) ?(%a*)$')
  P_t[i] = t
  P_nom[i] = tonumber(t)
  P_rem[i] = remember
  P_qi[i] = tonumber(qi)
  P_pri[i] = tonumber(p)
  P_eta[i] = tonumber(eta)
  P_flags[i] = flags
end
-- One read of the last-fired record for the whole batch.
local lasts = redis.call('HMGET', KEYS[2], unpack(names))
local any_paused = redis.call('SCARD', KEYS[4]) > 0

-- Fired markers: group the batch by nominal instant, one HMGET per instant.
local by_nominal = {}   -- nominal ms text -> {fire indexes}
local order = {}
for i = 0, n - 1 do
  local t = P_t[i]
  local g = by_nominal[t]
  if not g then
    g = {}
    by_nominal[t] = g
    order[#order + 1] = t
  end
  g[#g + 1] = i
end
local marked = {}       -- fire index -> true when its marker exists
for _, t in ipairs(order) do
  local g = by_nominal[t]
  local fields = {}
  for j, i in ipairs(g) do fields[j] = names[i + 1] end
  local got = redis.call('HMGET', prefix .. 'beat:fired:' .. t, unpack(fields))
  for j, i in ipairs(g) do
    if got[j] then marked[i] = true end
  end
end
local new_marks = {}    -- nominal ms text -> {schedule, 1, ...}
local mark_ttl = {}     -- nominal ms text -> longest remember ms
local function mark(schedule, t, remember)
  local m = new_marks[t]
  if not m then
    m = {}
    new_marks[t] = m
  end
  m[#m + 1] = schedule
  m[#m + 1] = '1'
  remember = tonumber(remember)
  if not mark_ttl[t] or remember > mark_ttl[t] then mark_ttl[t] = remember end
end

-- Batched writes.
local fired_lines, nf = {}, 0   -- the batch's routine journal entry
local last_args, nl = {}, 0     -- HSET KEYS[2]: schedule, nominal
local lastmsg_args, nm = {}, 0  -- HSET KEYS[3]: schedule, "queue\tid\tnominal"
local ready = {}                -- per queue index: {priority, id, ...} in fire order
local bodies = {}               -- per queue index: HSET msg args
local qkeys = {}                -- per queue index: its keys
local metas = {}                -- per priority: the meta value of a fresh message
-- Within one batch a schedule may come twice (catch-up `all`): the newest nominal wins.
local seen = {}
-- Ids of the messages this batch enqueues: their bodies are written at the end, so the
-- overlap check of a later fire of the same schedule in this batch looks here.
local enqueued = {}

for i = 0, n - 1 do
  local b = B + i * F
  local schedule = ARGV[b]
  local nominal, nominal_ms, flags = P_nom[i], P_t[i], P_flags[i]
  local last = seen[schedule] or tonumber(lasts[i + 1])
  if (last and last >= nominal) or marked[i] then
    out[i + 1] = 2
  elseif any_paused and redis.call('SISMEMBER', KEYS[4], schedule) == 1 then
    mark(schedule, nominal_ms, P_rem[i])
    seen[schedule] = nominal
    nl = nl + 2
    last_args[nl - 1] = schedule
    last_args[nl] = nominal
    journal(schedule, 'paused', nominal_ms, 'schedule is paused')
    out[i + 1] = 4
  else
    local id = ARGV[b + 1]
    local qi = P_qi[i]
    local qname = ARGV[8 + qi]
    local overlap = flags ~= '' and string.find(flags, 'o', 1, true)
    local running = nil
    if overlap then
      local cur = redis.call('HGET', KEYS[3], schedule)
      if cur then
        local q, rid = string.match(cur, '^(.-)\t(.-)\t')
        if q and (enqueued[rid] or redis.call('HEXISTS', prefix .. '{q:' .. q .. '}:msg', rid) == 1) then
          running = rid
        end
      end
    end
    mark(schedule, nominal_ms, P_rem[i])
    seen[schedule] = nominal
    nl = nl + 2
    last_args[nl - 1] = schedule
    last_args[nl] = nominal
    if running then
      journal(schedule, 'skipped_overlap', nominal_ms,
        'previous run ' .. running .. ' still queued or running')
      out[i + 1] = running
    else
      -- Message ids are fresh UUIDs and a tick passes the checks above once: no message of
      -- this id can be in the queue already.
      local k = qkeys[qi]
      if not k then
        k = celeriac_keys(6 + qi * 8)
        qkeys[qi] = k
        ready[qi], bodies[qi] = {}, {}
      end
      local priority = P_pri[i]
      local mv = metas[priority]
      if not mv then
        mv = celeriac_meta(priority, 0, 0)
        metas[priority] = mv
      end
      if P_eta[i] > now then
        redis.call('HSET', k.msg, id, ARGV[b + 2])
        redis.call('HSET', k.meta, id, mv)
        redis.call('ZADD', k.delayed, P_eta[i], id)
      else
        -- No meta for a fresh ready message: the reserve script reads a missing meta as
        -- "attempt 0, not reserved" at the priority of its ready score (enqueue_lib.lua).
        local r, bs = ready[qi], bodies[qi]
        local c = #r
        r[c + 1] = priority
        r[c + 2] = id
        bs[c + 1] = id
        bs[c + 2] = ARGV[b + 2]
      end
      enqueued[id] = true
      local record = qname .. '\t' .. id .. '\t' .. nominal_ms
      if overlap then
        -- The overlap check reads this record: a later fire of the same schedule in this
        -- batch must see it.
        redis.call('HSET', KEYS[3], schedule, record)
      else
        nm = nm + 2
        lastmsg_args[nm - 1] = schedule
        lastmsg_args[nm] = record
      end
      if flags ~= '' and string.find(flags, 'c', 1, true) then
        journal(schedule, 'caught_up', nominal_ms, 'message ' .. id .. ' on ' .. qname)
      else
        nf = nf + 1
        fired_lines[nf] = schedule .. '\t' .. record
      end
      out[i + 1] = 1
    end
  end
end

-- The batched writes: sequence numbers in fire order (FIFO within a priority), one HSET of
-- bodies and one ZADD per queue, one wake-up signal per queue.
for qi, r in pairs(ready) do
  if #r > 0 then
    local k = qkeys[qi]
    local count = #r / 2
    local seq = redis.call('INCRBY', k.seq, count) - count
    local zargs = {}
    for j = 1, #r, 2 do
      seq = seq + 1
      zargs[j] = (9 - r[j]) * CELERIAC_BAND + seq
      zargs[j + 1] = r[j + 1]
    end
    redis.call('HSET', k.msg, unpack(bodies[qi]))
    redis.call('ZADD', k.ready, unpack(zargs))
    celeriac_signal(k)
  end
end
for t, m in pairs(new_marks) do
  local key = prefix .. 'beat:fired:' .. t
  redis.call('HSET', key, unpack(m))
  if redis.call('PTTL', key) < mark_ttl[t] then redis.call('PEXPIRE', key, mark_ttl[t]) end
end
if nl > 0 then redis.call('HSET', KEYS[2], unpack(last_args)) end
if nm > 0 then redis.call('HSET', KEYS[3], unpack(lastmsg_args)) end
-- The journal keeps about `jmax` decisions: a batch entry of k fires counts k. Its lines are
-- "schedule\tqueue\tid\tnominal_ms".
local keep = tonumber(jmax)
if nf > 0 then
  redis.call('XADD', KEYS[5], '*', 'at', now, 'event', 'fired', 'beat', beat,
    'ticks', table.concat(fired_lines, '\n'))
  if nf > 1 then keep = math.max(10, math.floor(keep / nf)) end
end
redis.call('XTRIM', KEYS[5], 'MAXLEN', '~', keep)
return out

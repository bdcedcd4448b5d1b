-- fire: fire a batch of ticks, each atomically and exactly once.
-- (Concatenated after the broker's enqueue_lib.lua.)
--
-- KEYS[1] leader (STRING "token:epoch")
-- KEYS[2] last (HASH schedule -> "NOMINAL_MS\tQUEUE\tID\tMESSAGE_NOMINAL_MS": the last
--   decided tick, fired, paused or skipped, then the last message enqueued and its tick;
--   "NOMINAL_MS" alone before any message; the nominal part is empty once forgotten)
-- KEYS[3] paused (SET of schedules)          KEYS[4] journal (STREAM, all decisions)
-- then 8 keys per queue used by the batch (QueueKeys::all order), queue i at 5 + 8 * i.
-- ARGV[1] expected leader value "token:epoch"; ARGV[2] key prefix; ARGV[3] journal maxlen;
-- ARGV[4] per-schedule journal maxlen; ARGV[5] beat id; ARGV[6] n (fires); ARGV[7] nq
-- (queues); ARGV[8] ng (runs of fires sharing their parameters); ARGV[9] "1" when a schedule
-- may come more than once in the batch (else "0": no per-schedule bookkeeping is needed
-- within the batch); ARGV[10] the batch's journal lines as they are when every fire of the
-- batch is a routine fire (the common case: the script then builds no line); then the nq
-- queue names
-- (queue i's keys are the i-th group of 8 KEYS); then per run its length and its fires'
-- parameters "nominal_ms remember_ms queue_index priority eta_ms flags" (flags: "o" overlap
-- skip, "c" catch-up; may be empty); then 3 per fire, in run order: schedule, message id,
-- message body. Few arguments per fire and parameters parsed once per run: each argument
-- costs Redis a parse and an allocation twice (as a Redis string and as a Lua string), and
-- each `tonumber` a strtod (a wave of 100,000 minute crons is one run).
-- Journal entries written here carry the nominal instant in Unix ms (the reader formats it).
-- Returns one value per fire: 1 fired, 2 already fired, 4 paused, 0 not the leader, or a
-- string (the running message id) when skipped because of overlap.
--
-- Exactly once per tick: a tick fires only if the schedule's last decided nominal instant is
-- older AND its marker is new. Markers are fields of one hash per nominal instant,
-- `beat:fired:NOMINAL_MS` (field = schedule, expiring after `remember`): the same check as a
-- `SET fire:SCHEDULE:NOMINAL NX` key per tick, but a wave of ticks sharing an instant costs
-- one HSET instead of one command per tick. Every tick decided sets both, and the last
-- record only moves forward, so a tick older than the record was decided: the markers are
-- read only for schedules with no record (never fired, or forgotten by a reload while a
-- beat that has not reloaded yet may still fire their old ticks).
--
-- Cost: a wave of thousands of ticks is the common case (every minute cron due at :00).
-- Each redis.call from Lua costs microseconds beyond the command itself, so the routine path
-- makes none per fire: the last-record read, the message bodies and ready-queue insertions,
-- the markers, the last records and the journal are one command (or a few) per batch. The
-- Redis work per fire is what must be: one hash read (the last record), three hash writes
-- (record, marker, body) and one sorted-set insertion. Values go to Redis as the strings
-- they came as (a Lua number is formatted with printf on its way). Routine fires are journaled as ONE stream entry per batch
-- (`ticks`: one line per fire); exceptional decisions (paused, skipped, caught up) keep an
-- entry each, in the global and the schedule's own stream.
local F = 3
local n = tonumber(ARGV[6])
local nq = tonumber(ARGV[7])
local ng = tonumber(ARGV[8])
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
  redis.call('XADD', KEYS[4], '*', 'at', now, 'schedule', schedule,
    'event', event, 'nominal', nominal_ms, 'detail', detail, 'beat', beat)
  redis.call('XADD', prefix .. 'beat:journal:' .. schedule, 'MAXLEN', smax, '*', 'at', now,
    'schedule', schedule, 'event', event, 'nominal', nominal_ms, 'detail', detail, 'beat', beat)
end

local dups = ARGV[9] == '1'
-- The runs' parameters, parsed once per run; run g ends at fire index R_end[g].
local R_t, R_rem, R_qi, R_pri, R_eta, R_flags, R_end = {}, {}, {}, {}, {}, {}, {}
local a = 11 + nq
local last_index = -1
for g = 1, ng do
  local t, remember, qi, p, eta, flags = string.match(ARGV[a + 1], '^(%d+) (%d+) (%d+) (%d+) (%d+) ?(%a*)$')
  R_t[g], R_rem[g], R_qi[g], R_pri[g], R_eta[g], R_flags[g] =
    t, tonumber(remember), tonumber(qi), tonumber(p), tonumber(eta), flags
  last_index = last_index + tonumber(ARGV[a])
  R_end[g] = last_index
  a = a + 2
end
local B = a               -- first argument of the first fire
local names = {}
for j = 0, n - 1 do names[j + 1] = ARGV[B + j * F] end

-- Nominal instants as decimal Unix ms: compared as strings (no strtod per fire).
local function older(x, y)
  return #x < #y or (#x == #y and x < y)
end

-- One read of the last records for the whole batch.
local lasts = redis.call('HMGET', KEYS[2], unpack(names))
local any_paused = redis.call('SCARD', KEYS[3]) > 0

-- Fired markers of the fires with no last record: one HMGET per nominal instant.
local by_nominal = {}   -- nominal ms text -> {fire indexes}
local order = {}
local g = 1
for i = 0, n - 1 do
  if i > R_end[g] then g = g + 1 end
  local rec = lasts[i + 1]
  if not rec or string.byte(rec, 1) == 9 then   -- none, or forgotten ("\t...")
    local t = R_t[g]
    local group = by_nominal[t]
    if not group then
      group = {}
      by_nominal[t] = group
      order[#order + 1] = t
    end
    group[#group + 1] = i
  end
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
local mark_len = {}     -- nominal ms text -> #new_marks[t] (no `#` per fire)
local mark_ttl = {}     -- nominal ms text -> longest remember ms

-- Batched writes.
-- The batch's routine journal entry: its fires' indexes and queues (lines are built only when
-- some fire of the batch was not routine; else the beat's ARGV[10] is the entry).
local fired_i, fired_q, nf = {}, {}, 0
local last_args, nl = {}, 0     -- HSET KEYS[2]: schedule, record (in fire order: the last wins)
local ready = {}                -- per queue index: {priority, id, ...} in fire order
local bodies = {}               -- per queue index: HSET msg args (same length as ready)
local nready = {}               -- per queue index: #ready[qi]
local qkeys = {}                -- per queue index: its keys
-- Within one batch a schedule may come twice (catch-up `all`): the newest record wins.
local recs = {}                 -- schedule -> its record as this batch left it
-- Ids of the messages of `overlap: skip` schedules this batch enqueues: their bodies are
-- written at the end, so the overlap check of a later fire of the same schedule in this
-- batch looks here.
local enqueued = {}

g = 1
for i = 0, n - 1 do
  if i > R_end[g] then g = g + 1 end
  local b = B + i * F
  local schedule = ARGV[b]
  local nominal_ms, flags = R_t[g], R_flags[g]
  local rec = lasts[i + 1]
  if dups then rec = recs[schedule] or rec end
  -- The record's nominal part: up to its first tab (a forgotten one is empty).
  local tab = rec and string.find(rec, '\t', 1, true)
  local last = rec and (tab and string.sub(rec, 1, tab - 1) or rec)
  if (last and last ~= '' and not older(last, nominal_ms)) or marked[i] then
    out[i + 1] = 2
  else
    local decided = nil
    if any_paused and redis.call('SISMEMBER', KEYS[3], schedule) == 1 then
      journal(schedule, 'paused', nominal_ms, 'schedule is paused')
      out[i + 1] = 4
      decided = nominal_ms .. (tab and string.sub(rec, tab) or '')
    else
      local id = ARGV[b + 1]
      local qi = R_qi[g]
      local qname = ARGV[11 + qi]
      local running = nil
      if flags ~= '' and string.find(flags, 'o', 1, true) and tab then
        local q, rid = string.match(rec, '^%d*\t(.-)\t(.-)\t')
        if q and (enqueued[rid] or redis.call('HEXISTS', prefix .. '{q:' .. q .. '}:msg', rid) == 1) then
          running = rid
        end
      end
      if running then
        journal(schedule, 'skipped_overlap', nominal_ms,
          'previous run ' .. running .. ' still queued or running')
        out[i + 1] = running
        decided = nominal_ms .. string.sub(rec, tab)
      else
        -- Message ids are fresh UUIDs and a tick passes the checks above once: no message
        -- of this id can be in the queue already.
        local k = qkeys[qi]
        if not k then
          k = celeriac_keys(5 + qi * 8)
          qkeys[qi] = k
          ready[qi], bodies[qi], nready[qi] = {}, {}, 0
        end
        local priority = R_pri[g]
        if R_eta[g] > now then
          redis.call('HSET', k.msg, id, ARGV[b + 2])
          redis.call('HSET', k.meta, id, celeriac_meta(priority, 0, 0))
          redis.call('ZADD', k.delayed, R_eta[g], id)
        else
          -- No meta for a fresh ready message: the reserve script reads a missing meta as
          -- "attempt 0, not reserved" at the priority of its ready score (enqueue_lib.lua).
          local r, bs = ready[qi], bodies[qi]
          local c = nready[qi]
          r[c + 1] = priority
          r[c + 2] = id
          bs[c + 1] = id
          bs[c + 2] = ARGV[b + 2]
          nready[qi] = c + 2
        end
        if flags ~= '' then enqueued[id] = true end
        decided = nominal_ms .. '\t' .. qname .. '\t' .. id .. '\t' .. nominal_ms
        if flags ~= '' and string.find(flags, 'c', 1, true) then
          journal(schedule, 'caught_up', nominal_ms, 'message ' .. id .. ' on ' .. qname)
        else
          nf = nf + 1
          fired_i[nf] = i
          fired_q[nf] = qname
        end
        out[i + 1] = 1
      end
    end
    local m = new_marks[nominal_ms]
    if not m then
      m = {}
      new_marks[nominal_ms], mark_len[nominal_ms], mark_ttl[nominal_ms] = m, 0, 0
    end
    local c = mark_len[nominal_ms]
    m[c + 1] = schedule
    m[c + 2] = '1'
    mark_len[nominal_ms] = c + 2
    if R_rem[g] > mark_ttl[nominal_ms] then mark_ttl[nominal_ms] = R_rem[g] end
    if dups then recs[schedule] = decided end
    nl = nl + 2
    last_args[nl - 1] = schedule
    last_args[nl] = decided
  end
end

-- The batched writes: sequence numbers in fire order (FIFO within a priority), one HSET of
-- bodies and one ZADD per queue, one wake-up signal per queue. Scores go as integer text
-- (a Lua number would be formatted as %.17g, several times the cost).
for qi, r in pairs(ready) do
  local nr = nready[qi]
  if nr > 0 then
    local k = qkeys[qi]
    local count = nr / 2
    local seq = redis.call('INCRBY', k.seq, count) - count
    local zargs = {}
    local format = string.format
    for j = 1, nr, 2 do
      seq = seq + 1
      zargs[j] = format('%d', (9 - r[j]) * CELERIAC_BAND + seq)
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
-- The journal keeps about `jmax` decisions: a batch entry of k fires counts k. Its lines are
-- "schedule\tqueue\tid\tnominal_ms".
local keep = tonumber(jmax)
if nf > 0 then
  local ticks = ARGV[10]
  if nf < n then
    local lines = {}
    local g = 1
    for k = 1, nf do
      local i = fired_i[k]
      while i > R_end[g] do g = g + 1 end
      local b = B + i * F
      lines[k] = ARGV[b] .. '\t' .. fired_q[k] .. '\t' .. ARGV[b + 1] .. '\t' .. R_t[g]
    end
    ticks = table.concat(lines, '\n')
  end
  redis.call('XADD', KEYS[4], '*', 'at', now, 'event', 'fired', 'beat', beat, 'ticks', ticks)
  if nf > 1 then keep = math.max(10, math.floor(keep / nf)) end
end
redis.call('XTRIM', KEYS[4], 'MAXLEN', '~', keep)
return out

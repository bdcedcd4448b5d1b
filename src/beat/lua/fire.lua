-- fire: fire a batch of ticks, each atomically and exactly once.
-- (Concatenated after the broker's enqueue_lib.lua.)
--
-- Runs in a MULTI after one HSET per queue of the batch's message bodies (plain arguments
-- cost Redis less than arguments that go through Lua both ways): the script enqueues the
-- bodies of the ticks that fire and deletes those of the ticks that do not. The caller gives
-- every message a new id each time it sends it (a body written under a reused id could be
-- the body of that id's earlier, enqueued message, and deleting it would lose it).
--
-- KEYS[1] leader (STRING "token:epoch")
-- KEYS[2] last (HASH schedule -> "NOMINAL_MS\tQUEUE\tID\tMESSAGE_NOMINAL_MS": the last
--   decided tick, fired, paused or skipped, then the last message enqueued and its tick;
--   "NOMINAL_MS" alone before any message)
-- KEYS[3] paused (SET of schedules)          KEYS[4] journal (STREAM, all decisions)
-- then 8 keys per queue used by the batch (QueueKeys::all order), queue i at 5 + 8 * i.
-- ARGV[1] expected leader value "token:epoch"; ARGV[2] key prefix; ARGV[3] journal maxlen;
-- ARGV[4] per-schedule journal maxlen; ARGV[5] beat id; ARGV[6] n (fires); ARGV[7] nq
-- (queues); ARGV[8] ng (runs of fires sharing their parameters); ARGV[9] "1" when a schedule
-- may come more than once in the batch (else "0": no per-schedule bookkeeping is needed
-- within the batch); ARGV[10] the batch's journal lines as they are when every fire of the
-- batch is a routine fire (the common case: the script then builds no line); then the nq
-- queue names (queue i's keys are the i-th group of 8 KEYS); then per run its length and its
-- fires' parameters "nominal_ms queue_index priority eta_ms flags" (flags: "o" overlap
-- skip, "c" catch-up; may be empty); then 2 per fire, in run order: schedule, message id.
-- Few arguments per fire and parameters parsed once per run: each argument
-- costs Redis a parse and an allocation twice (as a Redis string and as a Lua string), and
-- each `tonumber` a strtod (a wave of 100,000 minute crons is one run).
-- Journal entries written here carry the nominal instant in Unix ms (the reader formats it).
-- Returns one value per fire: 1 fired, 2 already fired, 4 paused, 0 not the leader, or a
-- string (the running message id) when skipped because of overlap.
--
-- Exactly once per tick: a tick fires only if its schedule's last decided nominal instant is
-- older. Every decided tick (fired, paused, skipped) moves the record forward in the same
-- atomic step, and nothing moves it back or removes it (a reload that removes or retimes a
-- schedule keeps it: lua/forget.lua), so a tick that is not newer than the record was
-- decided, by this beat or another, whatever happened in between. This compare-and-set on
-- one forward-only instant is the check a `SET fire:SCHEDULE:NOMINAL NX` key per tick would
-- make, without a key per tick and without the key's expiry (after which an NX marker no
-- longer protects its tick).
--
-- Cost: a wave of thousands of ticks is the common case (every minute cron due at :00).
-- Each redis.call from Lua costs microseconds beyond the command itself, so the routine path
-- makes none per fire: the last-record read, the ready-queue insertions, the last records
-- and the journal are one command (or a few) per batch. The Redis work per fire is what must
-- be: one hash read (the record), two hash writes (record, body; the body outside Lua) and
-- one sorted-set insertion. Values go to Redis as the strings they came as (a Lua number is
-- formatted with printf on its way, so the ready scores are made once per run, not per
-- fire). Routine fires are journaled as ONE stream entry per batch (`ticks`: one line per
-- fire); exceptional decisions (paused, skipped, caught up) keep an entry each, in the
-- global and the schedule's own stream.
local F = 2
local n = tonumber(ARGV[6])
local nq = tonumber(ARGV[7])
local ng = tonumber(ARGV[8])
local out = {}
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
local R_t, R_qi, R_pri, R_eta, R_flags, R_end = {}, {}, {}, {}, {}, {}
local a = 11 + nq
local last_index = -1
for g = 1, ng do
  local t, qi, p, eta, flags = string.match(ARGV[a + 1], '^(%d+) (%d+) (%d+) (%d+) ?(%a*)$')
  R_t[g], R_qi[g], R_pri[g], R_eta[g], R_flags[g] =
    t, tonumber(qi), tonumber(p), tonumber(eta), flags
  last_index = last_index + tonumber(ARGV[a])
  R_end[g] = last_index
  a = a + 2
end
local B = a               -- first argument of the first fire

-- The bodies of the ticks that do not fire, per queue index: {id, ...}.
local unused, nunused = {}, {}
local function unuse(qi, id)
  local u = unused[qi]
  if not u then
    u = {}
    unused[qi], nunused[qi] = u, 0
  end
  local c = nunused[qi] + 1
  u[c] = id
  nunused[qi] = c
end
local function delete_unused()
  for qi, u in pairs(unused) do
    redis.call('HDEL', KEYS[5 + qi * 8 + 3], unpack(u))   -- the queue's msg key
  end
end

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  local g = 1
  for i = 0, n - 1 do
    if i > R_end[g] then g = g + 1 end
    unuse(R_qi[g], ARGV[B + i * F + 1])
    out[i + 1] = 0
  end
  delete_unused()
  return out
end

local names = {}
for j = 0, n - 1 do names[j + 1] = ARGV[B + j * F] end

local find, sub = string.find, string.sub

-- Whether a record `rec` (its nominal part: the digits before `tab`, or all of it) is at or
-- after the nominal instant `t`. Decimal Unix ms compared as strings: no strtod, and no
-- substring made (when the digit parts have the same length, `rec < t` compares the
-- digits, and on equal digits `rec` is not less). An empty nominal part (a record of an
-- earlier version, forgotten) is never at or after.
local function decided_by(rec, tab, t)
  local digits = tab and tab - 1 or #rec
  if digits ~= #t then return digits > #t end
  return not (rec < t)
end

-- One read of the last records for the whole batch.
local lasts = redis.call('HMGET', KEYS[2], unpack(names))
local any_paused = redis.call('SCARD', KEYS[3]) > 0

-- Batched writes.
-- The batch's routine journal entry: its fires' indexes and queues (lines are built only when
-- some fire of the batch was not routine; else the beat's ARGV[10] is the entry).
local fired_i, fired_q, nf = {}, {}, 0
local last_args, nl = {}, 0     -- HSET KEYS[2]: schedule, record (in fire order: the last wins)
-- Per queue index: {score, id, ...} for ZADD, its length, the queue's keys, and the first of
-- the sequence numbers this batch takes (one per run: the fires of a run share their nominal
-- instant and priority, so they share a ready score; Redis orders equal scores by message
-- id, and the ids are UUID v7, in the order the beat made them).
local ready, nready, qkeys, seq0 = {}, {}, {}, {}
local score_g, score = 0, nil   -- the ready score of run score_g
-- Within one batch a schedule may come twice (catch-up `all`): the newest record wins.
local recs = {}                 -- schedule -> its record as this batch left it

local g = 1
for i = 0, n - 1 do
  if i > R_end[g] then g = g + 1 end
  local b = B + i * F
  local schedule = ARGV[b]
  local nominal_ms, flags = R_t[g], R_flags[g]
  local rec = lasts[i + 1]
  if dups then rec = recs[schedule] or rec end
  -- Where the record's nominal part ends (its first tab).
  local tab = rec and find(rec, '\t', 1, true)
  local id = ARGV[b + 1]
  local qi = R_qi[g]
  if rec and decided_by(rec, tab, nominal_ms) then
    out[i + 1] = 2
    unuse(qi, id)
  else
    local decided = nil
    if any_paused and redis.call('SISMEMBER', KEYS[3], schedule) == 1 then
      journal(schedule, 'paused', nominal_ms, 'schedule is paused')
      out[i + 1] = 4
      unuse(qi, id)
      decided = nominal_ms .. (tab and sub(rec, tab) or '')
    else
      local qname = ARGV[11 + qi]
      local running = nil
      if flags ~= '' and find(flags, 'o', 1, true) and tab then
        -- (A message enqueued earlier in this batch has its body written already.)
        local q, rid = string.match(rec, '^%d*\t(.-)\t(.-)\t')
        if q and redis.call('HEXISTS', prefix .. '{q:' .. q .. '}:msg', rid) == 1 then
          running = rid
        end
      end
      if running then
        journal(schedule, 'skipped_overlap', nominal_ms,
          'previous run ' .. running .. ' still queued or running')
        out[i + 1] = running
        unuse(qi, id)
        decided = nominal_ms .. sub(rec, tab)
      else
        -- Message ids are fresh UUIDs and a tick passes the checks above once: no message
        -- of this id can be in the queue already.
        local k = qkeys[qi]
        if not k then
          k = celeriac_keys(5 + qi * 8)
          qkeys[qi] = k
          ready[qi], nready[qi] = {}, 0
        end
        local priority = R_pri[g]
        if R_eta[g] > now then
          redis.call('HSET', k.meta, id, celeriac_meta(priority, 0, 0))
          redis.call('ZADD', k.delayed, R_eta[g], id)
        else
          -- No meta for a fresh ready message: the reserve script reads a missing meta as
          -- "attempt 0, not reserved" at the priority of its ready score (enqueue_lib.lua).
          if score_g ~= g then
            local s0 = seq0[qi]
            if not s0 then
              s0 = redis.call('INCRBY', k.seq, ng) - ng
              seq0[qi] = s0
            end
            -- Integer text: a Lua number would go as %.17g, several times the cost.
            score = string.format('%d', (9 - priority) * CELERIAC_BAND + s0 + g)
            score_g = g
          end
          local r = ready[qi]
          local c = nready[qi]
          r[c + 1] = score
          r[c + 2] = id
          nready[qi] = c + 2
        end
        decided = nominal_ms .. '\t' .. qname .. '\t' .. id .. '\t' .. nominal_ms
        if flags ~= '' and find(flags, 'c', 1, true) then
          journal(schedule, 'caught_up', nominal_ms, 'message ' .. id .. ' on ' .. qname)
        else
          nf = nf + 1
          fired_i[nf] = i
          fired_q[nf] = qname
        end
        out[i + 1] = 1
      end
    end
    if dups then recs[schedule] = decided end
    nl = nl + 2
    last_args[nl - 1] = schedule
    last_args[nl] = decided
  end
end

-- The batched writes: one ZADD and one wake-up signal per queue, the unused bodies' removal,
-- the records.
for qi, r in pairs(ready) do
  if nready[qi] > 0 then
    local k = qkeys[qi]
    redis.call('ZADD', k.ready, unpack(r))
    celeriac_signal(k)
  end
end
delete_unused()
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

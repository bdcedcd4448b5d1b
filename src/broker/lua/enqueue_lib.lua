-- celeriac queue library: the helpers every queue script is built from.
--
-- This chunk is concatenated in front of each broker script, and of the beat's fire script,
-- so that all of them agree on the key layout, the meta format and the ready score. It only
-- defines local functions. Rust exposes it as `celeriac::broker::enqueue_lua_lib()`.
--
-- A queue's keys arrive as 8 consecutive KEYS entries (src/broker/keys.rs, QueueKeys::all):
--   ready    ZSET id -> (9 - priority) * 2^44 + seq     (priority first, then FIFO)
--   delayed  ZSET id -> eta, Unix ms
--   active   ZSET id -> lease deadline, Unix ms (Redis clock)
--   msg      HASH id -> body (JSON as enqueued; never rewritten)
--   meta     HASH id -> "priority attempt token[ last_error]" (token 0 = not reserved)
--   seq      STRING counter for FIFO sequence numbers and lease tokens
--   signal   LIST holding at most one marker; blocked reservers BLPOP it
--   dead     LIST of dead letters, newest first
-- Bodies are never decoded here: JSON round trips through cjson are not faithful.

local CELERIAC_BAND = 17592186044416 -- 2^44: width of one priority band of the ready score

-- Now, in Unix milliseconds, from the Redis clock (never a client's clock).
local function celeriac_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The keys of the queue whose 8 keys start at KEYS[first].
local function celeriac_keys(first)
  return {
    ready = KEYS[first], delayed = KEYS[first + 1], active = KEYS[first + 2],
    msg = KEYS[first + 3], meta = KEYS[first + 4], seq = KEYS[first + 5],
    signal = KEYS[first + 6], dead = KEYS[first + 7],
  }
end

-- Parses a meta value: priority, attempt, token, last_error (nil when absent).
-- A missing or malformed meta (a body pushed by hand) reads as priority `default_p`,
-- attempt 0, not reserved.
local function celeriac_meta_parse(s, default_p)
  if s then
    local p, a, t, e = string.match(s, '^(%d+) (%d+) (%d+) ?(.*)$')
    if p then
      if e == '' then e = nil end
      return tonumber(p), tonumber(a), tonumber(t), e
    end
  end
  return default_p or 0, 0, 0, nil
end

local function celeriac_meta(p, a, t, e)
  local s = string.format('%d %d %d', p, a, t)
  if e then s = s .. ' ' .. e end
  return s
end

-- Score at the back of priority p's band: a fresh sequence number.
local function celeriac_score_back(k, p)
  return (9 - p) * CELERIAC_BAND + redis.call('INCR', k.seq)
end

-- Score at the front of priority p's band (sequence 0); ties sort by id, and UUID v7 ids
-- sort by creation time.
local function celeriac_score_front(p)
  return (9 - p) * CELERIAC_BAND
end

-- Priority of a ready score.
local function celeriac_score_priority(score)
  return 9 - math.floor(tonumber(score) / CELERIAC_BAND)
end

-- Wakes a blocked reserver: the signal list holds at most one marker.
local function celeriac_signal(k)
  redis.call('LPUSH', k.signal, '1')
  redis.call('LTRIM', k.signal, 0, 0)
end

-- Enqueues one message: ready (eta_ms <= now_ms) or delayed. Returns 1 (ready), 2 (delayed),
-- or 0 when a message with this id is already in the queue (nothing changed). The caller
-- calls celeriac_signal(k) once after enqueueing.
local function celeriac_enqueue(k, now_ms, id, priority, attempt, eta_ms, body)
  if redis.call('HSETNX', k.msg, id, body) == 0 then
    return 0
  end
  redis.call('HSET', k.meta, id, celeriac_meta(priority, attempt, 0))
  if eta_ms > now_ms then
    redis.call('ZADD', k.delayed, eta_ms, id)
    return 2
  end
  redis.call('ZADD', k.ready, celeriac_score_back(k, priority), id)
  return 1
end

-- True when meta value m says the message is reserved under `token` (a string from ARGV).
local function celeriac_holds(m, token)
  local _, _, t = celeriac_meta_parse(m)
  return t > 0 and t == tonumber(token)
end

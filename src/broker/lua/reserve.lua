-- reserve: promotes due delayed messages, requeues expired leases, then moves up to `max`
-- ready messages of priority >= min_priority to active under a lease.
-- KEYS: the queue's 8 keys.
-- ARGV: max (0 = only promote/requeue and report), lease_ms, min_priority, work_limit
--       (most delayed messages promoted, and most expired leases requeued, per call).
-- Returns: now_ms, head_priority (-1: nothing ready), ms until the next delayed message is
-- due (-1: none), ms until the next lease expires (-1: none), n, then n times:
-- id, body (nil if missing), priority, attempt, token, last_error (nil if none).
local k = celeriac_keys(1)
local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local min_priority = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local now = celeriac_now_ms()

-- Due delayed messages go to the back of their priority band.
local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  local metas = redis.call('HMGET', k.meta, unpack(due))
  for i, id in ipairs(due) do
    local p = celeriac_meta_parse(metas[i])
    redis.call('ZADD', k.ready, celeriac_score_back(k, p), id)
  end
  redis.call('ZREM', k.delayed, unpack(due))
end

-- Expired leases go back to the front of their band, attempt + 1.
local expired = redis.call('ZRANGEBYSCORE', k.active, '-inf', now, 'LIMIT', 0, limit)
if #expired > 0 then
  local metas = redis.call('HMGET', k.meta, unpack(expired))
  for i, id in ipairs(expired) do
    local p, a = celeriac_meta_parse(metas[i])
    redis.call('HSET', k.meta, id, celeriac_meta(p, a + 1, 0, 'lease expired'))
    redis.call('ZADD', k.ready, celeriac_score_front(p), id)
  end
  redis.call('ZREM', k.active, unpack(expired))
end

local out = { now, -1, -1, -1, 0 }
if max > 0 then
  local max_score = (10 - min_priority) * CELERIAC_BAND - 1
  local items = redis.call('ZRANGEBYSCORE', k.ready, '-inf', max_score, 'WITHSCORES', 'LIMIT', 0, max)
  local n = #items / 2
  if n > 0 then
    local ids = {}
    for i = 1, n do
      ids[i] = items[2 * i - 1]
    end
    redis.call('ZREM', k.ready, unpack(ids))
    local bodies = redis.call('HMGET', k.msg, unpack(ids))
    local metas = redis.call('HMGET', k.meta, unpack(ids))
    local first_token = redis.call('INCRBY', k.seq, n) - n
    local deadline = now + lease_ms
    local zargs, hargs = {}, {}
    for i = 1, n do
      local id = ids[i]
      local p, a, _, e = celeriac_meta_parse(metas[i], celeriac_score_priority(items[2 * i]))
      local token = first_token + i
      zargs[2 * i - 1] = deadline
      zargs[2 * i] = id
      hargs[2 * i - 1] = id
      hargs[2 * i] = celeriac_meta(p, a, token, e)
      local b = #out
      out[b + 1] = id
      out[b + 2] = bodies[i]
      out[b + 3] = p
      out[b + 4] = a
      out[b + 5] = token
      out[b + 6] = e or false
    end
    redis.call('ZADD', k.active, unpack(zargs))
    redis.call('HSET', k.meta, unpack(hargs))
    out[5] = n
  end
end

local head = redis.call('ZRANGE', k.ready, 0, 0, 'WITHSCORES')
if #head > 0 then
  out[2] = celeriac_score_priority(head[2])
  if max > 0 then
    -- More is ready than this caller took: pass the wake-up on to the next blocked reserver.
    celeriac_signal(k)
  end
end
local next_due = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
if #next_due > 0 then
  out[3] = math.max(0, tonumber(next_due[2]) - now)
end
local next_expiry = redis.call('ZRANGE', k.active, 0, 0, 'WITHSCORES')
if #next_expiry > 0 then
  out[4] = math.max(0, tonumber(next_expiry[2]) - now)
end
return out

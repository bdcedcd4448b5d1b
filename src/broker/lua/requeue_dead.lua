-- requeue_dead: puts dead letters back on their queue (ready, their priority, attempt 0).
-- A dead letter whose id is queued again already is dropped as stale.
-- KEYS: the queue's 8 keys.
-- ARGV: 'all', count   -> takes the `count` oldest entries; returns {requeued, taken}.
--                         Undecodable entries are kept (moved to the newest end).
--       'id', id, start, count -> looks for `id` among entries start..start+count-1
--                         (newest first); returns {requeued (1/0), next start or -1 when the
--                         id was found or the list ended}.
local k = celeriac_keys(1)
local now = celeriac_now_ms()
local requeued = 0

local function requeue(entry)
  if celeriac_enqueue(k, now, entry.id, tonumber(entry.priority) or 0, 0, 0, entry.body) > 0 then
    requeued = requeued + 1
  end
end

local function decode(raw)
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry.id) == 'string' and type(entry.body) == 'string' then
    return entry
  end
  return nil
end

if ARGV[1] == 'all' then
  local count = tonumber(ARGV[2])
  local entries = redis.call('LRANGE', k.dead, -count, -1)
  if #entries > 0 then
    redis.call('LTRIM', k.dead, 0, -#entries - 1)
  end
  for i = #entries, 1, -1 do -- oldest first
    local entry = decode(entries[i])
    if entry then
      requeue(entry)
    else
      redis.call('LPUSH', k.dead, entries[i])
    end
  end
  if requeued > 0 then
    celeriac_signal(k)
  end
  return { requeued, #entries }
end

local id = ARGV[2]
local start = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local entries = redis.call('LRANGE', k.dead, start, start + count - 1)
local needle = '"id":' .. cjson.encode(id) -- exactly as dead_letter.lua encoded it
for i, raw in ipairs(entries) do
  if string.find(raw, needle, 1, true) then
    local entry = decode(raw)
    if entry and entry.id == id then
      requeue(entry)
      local tomb = '\0celeriac-requeued\0'
      redis.call('LSET', k.dead, start + i - 1, tomb)
      redis.call('LREM', k.dead, 1, tomb)
      if requeued > 0 then
        celeriac_signal(k)
      end
      return { requeued, -1 }
    end
  end
end
if #entries < count then
  return { 0, -1 }
end
return { 0, start + count }

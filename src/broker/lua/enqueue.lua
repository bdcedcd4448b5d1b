-- enqueue: adds messages to one queue.
-- KEYS: the queue's 8 keys.
-- ARGV: n, then n times: id, priority, attempt, eta_ms (0 = now), body.
-- Returns how many were newly enqueued (ids already queued are skipped).
local k = celeriac_keys(1)
local now = celeriac_now_ms()
local n = tonumber(ARGV[1])
local added = 0
for i = 0, n - 1 do
  local b = 2 + i * 5
  local r = celeriac_enqueue(k, now, ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]),
    tonumber(ARGV[b + 3]), ARGV[b + 4])
  if r > 0 then
    added = added + 1
  end
end
if added > 0 then
  celeriac_signal(k)
end
return added

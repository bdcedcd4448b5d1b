-- Store a result the way Celery's Redis backend does: SET with a TTL, then PUBLISH on the
-- key's channel (what AsyncResult.get() waits on). Like Celery, a stored SUCCESS is never
-- overwritten (a redelivered task must not replace its result). KEYS: 1 result key.
-- ARGV: 1 meta JSON, 2 TTL seconds. Returns 1 if stored, 0 if a SUCCESS was kept.
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1

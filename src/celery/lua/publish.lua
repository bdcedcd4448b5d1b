-- Publish one message into a kombu list, at most once per dedupe key. KEYS: 1 the list,
-- 2 the dedupe key. ARGV: 1 the message, 2 dedupe TTL seconds. Returns 1 if pushed.
-- (The same logic as publish.rs's PUBLISH_LUA, for a caller on the Celery app's Redis.)
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 1
end
return 0

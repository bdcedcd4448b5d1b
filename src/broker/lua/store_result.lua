-- store_result: stores a result as a one-element list with a TTL (see keys.rs, result_key).
-- KEYS: the result key.
-- ARGV: result JSON, ttl_ms.
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

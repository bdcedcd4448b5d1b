-- resign: give the leader lease up if this token holds it.
-- KEYS[1] leader; ARGV[1] token. Returns 1 when released, 0 otherwise.
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*):%d+$') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0

-- Redis Cluster form of hot_add.lua's writes, for ONE channel (one slot, tag {c<channel>}):
-- add the members and keep the newest N, atomically, so a reader never sees more than N.
-- The metadata-version check that hot_add.lua does in the same script is, on a cluster, a GET
-- one step before (the version key is on another slot): see storage/scripts.py.
-- KEYS[1]    hot-cache sorted set of the channel
-- ARGV[1]    hot cache size N      ARGV[2..]  members, in message order
-- Returns the number of members given.
local keep = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(keep + 1))
return #ARGV - 1

-- Accept a batch into the hot cache, but only if the metadata version is still the one the
-- batch was authorized under. This write is where a message is accepted (everything after it
-- — history, fan-out — follows from it), so comparing the version here, atomically, means
-- that once the control plane has bumped the version no message authorized under the old
-- rules is accepted: the worker re-authorizes the batch instead (chatscale/controlplane.py).
-- KEYS[1]    metadata version counter
-- KEYS[2..]  hot-cache sorted set of each message's channel (one per message; may repeat;
--            none when the hot cache is off, hot_size=0: then only the version is compared)
-- ARGV[1]    version the batch was authorized under ('' when the counter did not exist)
-- ARGV[2]    hot cache size N: each set keeps its newest N members
-- ARGV[3..]  hot-cache member of each message, in the order of KEYS[2..]
-- Returns 1 when written, 0 when the version moved (nothing written).
local version = redis.call('GET', KEYS[1]) or ''
if version ~= ARGV[1] then
  return 0
end
local keep = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[i + 1])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -(keep + 1))
end
return 1

-- One new message on one Redis node, in one step: the nonce, the rate limits, the queue.
-- What the gateway otherwise does in three round trips (SET NX GET of the nonce, ratelimit.lua,
-- XADD), atomically: a message is queued iff its windows admitted it, and then its nonce
-- holds its id; a refused one consumes no slot and claims no nonce. Only for keys on one node
-- (a Redis Cluster keeps the three steps: the keys are in different slots).
-- (The window functions are windows.lua, in front of this text.)
-- KEYS[1]          the ingest shard stream
-- KEYS[2]          the send's nonce key, if ARGV[4] > 0; then the windows
-- ARGV[1]          now in ms, from the caller's clock
-- ARGV[2]          a unique event id for the windows
-- ARGV[3]          the message id the gateway drew
-- ARGV[4]          the nonce's TTL in s; 0: the send has no nonce (no nonce key in KEYS)
-- ARGV[5]          the ingest entry (field "e")
-- ARGV[4 + 2i]     limit of window i (0: off)
-- ARGV[5 + 2i]     span of window i in ms
-- Returns {0} queued; {1, id} a retry: the nonce already holds ``id``, nothing was counted or
-- queued (the caller queues it again under that id: the worker stores and delivers an id once);
-- {2, i, retry_after_ms} refused by window i, as ratelimit.lua answers.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[4])
local k0 = 1
if ttl > 0 then
  k0 = 2
  local claimed = redis.call('GET', KEYS[2])
  if claimed then
    return {1, claimed}
  end
end
local n = #KEYS - k0
local worst, wait = refusing_window(k0, 5, n, now)
if worst > 0 then
  return {2, worst, wait}
end
record_windows(k0, 5, n, now, ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ttl)
end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[5])
return {0}

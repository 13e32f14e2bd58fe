-- All-or-nothing sliding-window rate limits. One event is admitted only if every window named
-- has room, and then it is recorded in all of them, in one atomic step: two gateways checking
-- the same user at the same moment cannot both take the last slot (no check-then-act race),
-- and a refused event consumes nothing, so a flood does not push the retry time further out.
-- KEYS[i]          one window: sorted set of admitted event times (score = ms)
-- ARGV[1]          now in ms, from the caller's clock (tests inject it)
-- ARGV[2]          a unique event id (two events in the same ms stay two members)
-- ARGV[1 + 2i]     limit of window KEYS[i] (0: the window is off)
-- ARGV[2 + 2i]     span of window KEYS[i] in ms
-- Returns {0, 0} if admitted, else {i, retry_after_ms}: the refusing window that frees up
-- last (waiting for it admits the event, if nothing else arrives) and how long that takes.
local now = tonumber(ARGV[1])
local worst, wait = 0, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local span = tonumber(ARGV[2 + 2 * i])
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limit then
      -- the event fits once the (count - limit + 1)-th oldest entry has left the window
      local entry = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
      local retry = tonumber(entry[2]) + span - now
      if retry > wait or worst == 0 then
        worst, wait = i, retry
      end
    end
  end
end
if worst > 0 then
  return {worst, wait}
end
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local span = tonumber(ARGV[2 + 2 * i])
  if limit > 0 then
    redis.call('ZADD', KEYS[i], now, now .. ':' .. ARGV[2])
    redis.call('PEXPIRE', KEYS[i], span)  -- garbage collection only; decisions use ARGV[1]
  end
end
return {0, 0}

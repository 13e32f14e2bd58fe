-- Sliding-window logs, the part ratelimit.lua and send.lua share (gateway/ratelimit.py puts
-- this text in front of each). Window i of n is the sorted set KEYS[k0 + i] of admitted event
-- times (score = ms) with limit ARGV[a0 + 2i - 1] (0: the window is off) and span ARGV[a0 + 2i]
-- in ms; ``now`` is the caller's clock in ms (tests inject it).

-- The refusing window that frees up last (waiting for it admits the event, if nothing else
-- arrives) and how long that takes in ms; 0, 0 if every window has room.
local function refusing_window(k0, a0, n, now)
  local worst, wait = 0, 0
  for i = 1, n do
    local key = KEYS[k0 + i]
    local limit = tonumber(ARGV[a0 + 2 * i - 1])
    local span = tonumber(ARGV[a0 + 2 * i])
    if limit > 0 then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
      local count = redis.call('ZCARD', key)
      if count >= limit then
        -- the event fits once the (count - limit + 1)-th oldest entry has left the window
        local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
        local retry = tonumber(entry[2]) + span - now
        if retry > wait or worst == 0 then
          worst, wait = i, retry
        end
      end
    end
  end
  return worst, wait
end

-- Record the event (unique id ``event``: two events in the same ms stay two members) in every
-- window that is on.
local function record_windows(k0, a0, n, now, event)
  for i = 1, n do
    local key = KEYS[k0 + i]
    local limit = tonumber(ARGV[a0 + 2 * i - 1])
    local span = tonumber(ARGV[a0 + 2 * i])
    if limit > 0 then
      redis.call('ZADD', key, now, now .. ':' .. event)
      redis.call('PEXPIRE', key, span)  -- garbage collection only; decisions use ``now``
    end
  end
end

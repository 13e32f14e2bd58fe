-- All-or-nothing sliding-window rate limits. One event is admitted only if every window named
-- has room, and then it is recorded in all of them, in one atomic step: two gateways checking
-- the same user at the same moment cannot both take the last slot (no check-then-act race),
-- and a refused event consumes nothing, so a flood does not push the retry time further out.
-- (The window functions are windows.lua, in front of this text.)
-- KEYS[i]          one window: sorted set of admitted event times (score = ms)
-- ARGV[1]          now in ms, from the caller's clock (tests inject it)
-- ARGV[2]          a unique event id (two events in the same ms stay two members)
-- ARGV[1 + 2i]     limit of window KEYS[i] (0: the window is off)
-- ARGV[2 + 2i]     span of window KEYS[i] in ms
-- Returns {0, 0} if admitted, else {i, retry_after_ms}: the refusing window that frees up
-- last (waiting for it admits the event, if nothing else arrives) and how long that takes.
local now = tonumber(ARGV[1])
local worst, wait = refusing_window(0, 2, #KEYS, now)
if worst > 0 then
  return {worst, wait}
end
record_windows(0, 2, #KEYS, now, ARGV[2])
return {0, 0}

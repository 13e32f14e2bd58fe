-- Redis Cluster form of fanout.lua, for ONE gateway (one slot, tag {gw:<id>}): write one
-- message's delivery entry to the gateway's stream at most once, if the gateway is alive.
-- fanout.lua writes every gateway under one per-message marker; on a cluster the gateways'
-- streams are on different slots, so each gateway has its own marker beside its stream, and
-- the marker and the XADD stay atomic: a redelivery writes exactly the gateways the first run
-- did not reach (never one twice), and each stream still gets a channel's messages in order.
-- KEYS[1]  marker of (gateway, message)   KEYS[2] gateway alive key   KEYS[3] delivery stream
-- ARGV[1]  delivery entry (JSON)   ARGV[2] approximate MAXLEN   ARGV[3] marker TTL in seconds
-- Returns 1 if written, 0 if this gateway already had it, 2 if the gateway is not alive.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 2
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
return 1

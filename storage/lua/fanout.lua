-- Fan one message out to the gateways of its guild, at most once per message id, fenced by the
-- shard lease (one node: the gateways' keys are built here from the ids the route set holds,
-- so not every key is declared, which a cluster refuses; there storage/scripts.py splits it).
-- KEYS[1]  fanned-out marker of the message (SET NX: a redelivery finds it and skips)
-- KEYS[2]  lease key of the shard this entry came from ('' semantics: ARGV[4] == '0' skips)
-- KEYS[3]  the guild's route set (gateway ids), read at fan-out time
-- ARGV[1]  delivery entry (JSON)      ARGV[2] approximate MAXLEN of delivery streams
-- ARGV[3]  marker TTL in seconds      ARGV[4] '1' to check the lease   ARGV[5] consumer name
-- ARGV[6..9] a gateway's alive key and delivery stream, each as the text before and after the
--          gateway id (chatscale/keys.py, Keys.gateway_key_parts)
-- Returns: number of gateways written, 0 if already fanned out, -1 if the lease is not ours.
if ARGV[4] == '1' and redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return -1
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
local written = 0
local gateways = redis.call('SMEMBERS', KEYS[3])
table.sort(gateways)
for _, gw in ipairs(gateways) do
  if redis.call('EXISTS', ARGV[6] .. gw .. ARGV[7]) == 1 then
    redis.call('XADD', ARGV[8] .. gw .. ARGV[9], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
    written = written + 1
  end
end
return written

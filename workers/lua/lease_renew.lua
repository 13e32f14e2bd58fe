-- Renew or release a shard lease only if we still own it (a plain PEXPIRE/DEL could touch a
-- lease another worker took after ours expired).
-- KEYS[1] lease key   ARGV[1] consumer name   ARGV[2] ttl ms, or '0' to release
-- Returns 1 if we owned it, 0 otherwise.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1

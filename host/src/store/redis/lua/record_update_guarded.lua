-- ARGV[2]: the record, ARGV[3]: its new value, ARGV[4..6]: the guard (see
-- `guard_holds`). Answers 1 if replaced, 0 if the guard did not hold or the
-- record does not exist.
if not guard_holds(4) then return 0 end
if redis.call('HEXISTS', base .. 'rec', ARGV[2]) == 0 then return 0 end
redis.call('HSET', base .. 'rec', ARGV[2], ARGV[3])
return 1


if redis.call('HEXISTS', base .. 'rec', ARGV[2]) == 0 then return 0 end
redis.call('HSET', base .. 'rec', ARGV[2], ARGV[3])
return 1


if redis.call('HSETNX', base .. 'rec', ARGV[2], ARGV[3]) == 0 then return 0 end
register()
return 1

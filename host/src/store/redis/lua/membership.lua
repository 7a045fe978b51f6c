
if not redis.call('ZSCORE', base .. 'grp:' .. ARGV[2], ARGV[3]) then return -1 end
return tonumber(redis.call('HGET', base .. 'mem', ARGV[3]) or '0')


if not guard_holds(4) then return {'stale', '0', 0} end
return {'tally', counter_at(ARGV[2], ARGV[3]), redis.call('HLEN', base .. 'mem')}

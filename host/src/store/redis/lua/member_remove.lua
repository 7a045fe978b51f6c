
local group, member = ARGV[2], ARGV[3]
local gkey, mem = base .. 'grp:' .. group, base .. 'mem'
if not redis.call('ZSCORE', gkey, member) then return {0, redis.call('HLEN', mem)} end
local n = tonumber(redis.call('HGET', mem, member))
if not n or n < 1 then corrupt('member ' .. member .. ' is in a group but has no group count') end
excl_ready()
redis.call('ZREM', gkey, member)
if redis.call('EXISTS', gkey) == 0 then redis.call('ZREM', base .. 'groups', group) end
local outcome = 1
if n == 1 then
  redis.call('HDEL', mem, member)
  excl_add(group, -1)
  outcome = 2
else
  redis.call('HINCRBY', mem, member, -1)
  if n == 2 then excl_add(only_group(member, group, groups_now()), 1) end
end
excl_done()
return {outcome, redis.call('HLEN', mem)}


local group, member, limit = ARGV[2], ARGV[3], ARGV[4]
local name, now = ARGV[8], ARGV[9]
if not guard_holds(5) then return {4, 0, '0'} end
local gkey, mem = base .. 'grp:' .. group, base .. 'mem'
local function add()
  local count = redis.call('HLEN', mem)
  if redis.call('ZSCORE', gkey, member) then return 0, count end
  local outcome
  local n = redis.call('HGET', mem, member)
  if n and tonumber(n) >= MAX_GROUPS then return TOO_MANY_GROUPS, count end
  if n then
    excl_ready()
    if n == '1' then excl_add(only_group(member, group, groups_now()), -1) end
    redis.call('HINCRBY', mem, member, 1)
    outcome = 1
  elseif not room(count, limit) then
    return 3, count
  else
    excl_ready()
    redis.call('HSET', mem, member, 1)
    excl_add(group, 1)
    count = count + 1
    outcome = 2
  end
  redis.call('ZADD', gkey, 0, member)
  redis.call('ZADD', base .. 'groups', 0, group)
  register()
  return outcome, count
end
local outcome, count = add()
local counter = '0'
if now ~= '' then counter = counter_at(name, now) end
return {outcome, count, counter}


local group, limit = ARGV[2], ARGV[3]
local gkey, mem = base .. 'grp:' .. group, base .. 'mem'
local count = redis.call('HLEN', mem)
local out = {0}
-- Each member's group count, read once: a member past MAX_GROUPS refuses the
-- whole call before anything is written (TOO_MANY_GROUPS where it stands, 0
-- elsewhere). The loop below reads the counts kept here: a member's own count
-- changes only at its first mention, and a second one is already in the group.
local held = {}
for i = 4, #ARGV do
  local n = redis.call('HGET', mem, ARGV[i])
  if n and tonumber(n) >= MAX_GROUPS and not redis.call('ZSCORE', gkey, ARGV[i]) then
    for j = 4, #ARGV do out[#out + 1] = 0 end
    out[i - 2] = TOO_MANY_GROUPS
    out[1] = count
    return out
  end
  held[i] = n or false
end
local changed = false
local alone, groups = 0, nil
excl_ready()
for i = 4, #ARGV do
  local m = ARGV[i]
  local o
  local n = held[i]
  if redis.call('ZSCORE', gkey, m) then
    o = 0
  elseif n then
    if n == '1' then
      groups = groups or groups_now()
      excl_add(only_group(m, group, groups), -1)
    end
    redis.call('HINCRBY', mem, m, 1)
    redis.call('ZADD', gkey, 0, m)
    o = 1
  elseif not room(count, limit) then
    o = 3
  else
    redis.call('HSET', mem, m, 1)
    redis.call('ZADD', gkey, 0, m)
    alone = alone + 1
    count = count + 1
    o = 2
  end
  if o == 1 or o == 2 then changed = true end
  out[#out + 1] = o
end
excl_add(group, alone)
if changed then
  redis.call('ZADD', base .. 'groups', 0, group)
  register()
end
excl_done()
out[1] = count
return out

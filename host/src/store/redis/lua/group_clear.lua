
local group = ARGV[2]
local gkey, mem = base .. 'grp:' .. group, base .. 'mem'
local members = redis.call('ZRANGE', gkey, 0, -1)
if #members == 0 then return {0, 0, redis.call('HLEN', mem)} end
local counts = {}
for i, m in ipairs(members) do
  local n = tonumber(redis.call('HGET', mem, m))
  if not n or n < 1 then corrupt('member ' .. m .. ' is in a group but has no group count') end
  counts[i] = n
end
excl_ready()
local groups = groups_now()
local released = 0
local gained = {}
for i, m in ipairs(members) do
  if counts[i] == 1 then
    redis.call('HDEL', mem, m)
    released = released + 1
  else
    redis.call('HINCRBY', mem, m, -1)
    if counts[i] == 2 then
      local g = only_group(m, group, groups)
      gained[g] = (gained[g] or 0) + 1
    end
  end
end
redis.call('DEL', gkey)
redis.call('ZREM', base .. 'groups', group)
redis.call('HDEL', base .. 'excl', group)
for g, n in pairs(gained) do excl_add(g, n) end
excl_done()
return {#members, released, redis.call('HLEN', mem)}

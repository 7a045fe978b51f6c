
local records = redis.call('HGETALL', base .. 'rec')
local counters = {}
for _, name in ipairs(redis.call('ZRANGE', base .. 'ctrs', 0, -1)) do
  local c = redis.call('HMGET', base .. 'ctr:' .. name, 'v', 'x')
  if c[1] then
    counters[#counters + 1] = name
    counters[#counters + 1] = c[1]
    counters[#counters + 1] = c[2] or ''
  end
end
local onces = {}
for _, key in ipairs(redis.call('ZRANGE', base .. 'onces', 0, -1)) do
  local x = redis.call('GET', base .. 'once:' .. key)
  if x then
    onces[#onces + 1] = key
    onces[#onces + 1] = x
  end
end
local memberships = {}
for _, g in ipairs(redis.call('ZRANGE', base .. 'groups', 0, -1)) do
  for _, m in ipairs(redis.call('ZRANGE', base .. 'grp:' .. g, 0, -1)) do
    memberships[#memberships + 1] = g
    memberships[#memberships + 1] = m
  end
end
return {records, counters, onces, memberships}


for _, name in ipairs(redis.call('ZRANGE', base .. 'ctrs', 0, -1)) do
  redis.call('DEL', base .. 'ctr:' .. name)
end
for _, key in ipairs(redis.call('ZRANGE', base .. 'onces', 0, -1)) do
  redis.call('DEL', base .. 'once:' .. key)
end
for _, g in ipairs(redis.call('ZRANGE', base .. 'groups', 0, -1)) do
  redis.call('DEL', base .. 'grp:' .. g)
end
redis.call('DEL', base .. 'rec', base .. 'ctrs', base .. 'onces', base .. 'groups', base .. 'mem',
  base .. 'excl', base .. 'exclv')
local nrec, nctr, nonce, nmem = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 6
for _ = 1, nrec do
  redis.call('HSET', base .. 'rec', ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, nctr do
  local key = base .. 'ctr:' .. ARGV[i]
  if ARGV[i + 2] == '' then
    redis.call('HSET', key, 'v', ARGV[i + 1])
  else
    redis.call('HSET', key, 'v', ARGV[i + 1], 'x', ARGV[i + 2])
  end
  keep(key, ARGV[i + 3], base .. 'ctrs', ARGV[i])
  i = i + 4
end
for _ = 1, nonce do
  local key = base .. 'once:' .. ARGV[i]
  redis.call('SET', key, ARGV[i + 1])
  keep(key, ARGV[i + 2], base .. 'onces', ARGV[i])
  i = i + 3
end
for _ = 1, nmem do
  redis.call('ZADD', base .. 'grp:' .. ARGV[i], 0, ARGV[i + 1])
  redis.call('ZADD', base .. 'groups', 0, ARGV[i])
  redis.call('HINCRBY', base .. 'mem', ARGV[i + 1], 1)
  i = i + 2
end
if nmem > 0 then excl_ready() end
if nrec + nctr + nonce + nmem > 0 then register() end
return 'OK'


local name, amount, limit = ARGV[2], ARGV[3], ARGV[4]
local has_once, okey, oexp = ARGV[5] == '1', ARGV[6], ARGV[7]
local cexp, now, cgc, ogc, ofp = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
if not guard_holds(13) then return {'stale', '0', 0} end
local members = redis.call('HLEN', base .. 'mem')
local ckey = base .. 'ctr:' .. name
local okk = base .. 'once:' .. okey
local current, stored_x = counter_at(name, now)
if has_once then
  local seen = redis.call('GET', okk)
  if seen then
    local x, fp = marker(seen, okey)
    if live(x, now) then
      if fp == ofp then return {'repeated', current, members} end
      return {'conflict', current, members}
    end
  end
end
local new = uadd(current, amount)
if not new or (limit ~= '' and ucmp(new, limit) > 0) then return {'refused', current, members} end
if stored_x == cexp then
  -- Most charges: the counter is there with this expiry, so its TTL, its index
  -- entry and the scope's registration are those the write that set the expiry
  -- made; the indexes are pruned at such writes (about once a cycle).
  redis.call('HSET', ckey, 'v', new)
else
  if cexp == '' then
    redis.call('HSET', ckey, 'v', new)
    redis.call('HDEL', ckey, 'x')
  else
    redis.call('HSET', ckey, 'v', new, 'x', cexp)
  end
  keep(ckey, cgc, base .. 'ctrs', name)
  prune(base .. 'onces')
  register()
end
if has_once then
  -- Kept even if already expired: a later call at an earlier `now` (a clock
  -- stepped back) must still see it, as in the other backends.
  redis.call('SET', okk, oexp .. ' ' .. ofp)
  list(okk, ogc, base .. 'onces', okey)
end
return {'applied', new, members}

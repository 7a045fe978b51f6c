
local kept = redis.call('EXISTS', base .. 'exclv') == 1
local computed = nil
if not kept then computed = excl_computed() end
local out = {}
for _, g in ipairs(redis.call('ZRANGE', base .. 'groups', 0, -1)) do
  local e
  if kept then e = redis.call('HGET', base .. 'excl', g) or '0' else e = tostring(computed[g] or 0) end
  out[#out + 1] = g
  out[#out + 1] = tostring(redis.call('ZCARD', base .. 'grp:' .. g))
  out[#out + 1] = e
end
return out


if redis.call('EXISTS', base .. 'rec', base .. 'mem') > 0 then return 1 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCOUNT', base .. 'ctrs', string.format('%d', now_ms), '+inf') > 0 then return 1 end
return 0

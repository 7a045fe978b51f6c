
local base = KEYS[1]
local scope = ARGV[1]
local NEVER = '9223372036854775807'
local U64MAX = '18446744073709551615'

-- Refuses, before anything is written, to go on with data this code did not write.
local function corrupt(what) error({err = 'CGCORRUPT ' .. what}) end

-- Adds the scope to the registry (single server: same node, same atomic step).
local function register() if KEYS[3] then redis.call('SADD', KEYS[3], scope) end end

-- Compares decimal strings without leading zeros, exactly: Lua's numbers are
-- doubles, so they are compared 15 digits at a time.
local function ucmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = 1, #a, 15 do
    local x, y = tonumber(string.sub(a, i, i + 14)), tonumber(string.sub(b, i, i + 14))
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

-- The same for signed decimals (instants).
local function icmp(a, b)
  local na, nb = string.byte(a, 1) == 45, string.byte(b, 1) == 45
  if na ~= nb then return na and -1 or 1 end
  if na then return ucmp(string.sub(b, 2), string.sub(a, 2)) end
  return ucmp(a, b)
end

-- Whether something expiring at `x` is still there at `now`.
local function live(x, now) return x == NEVER or icmp(x, now) > 0 end

-- a + b for u64 decimals; nil when the sum overflows a u64. Below 10^15 each,
-- the sum is under 2^53 and a double holds it exactly: the common case, without
-- the digit loop.
local function uadd(a, b)
  if #a < 16 and #b < 16 then return string.format('%.0f', tonumber(a) + tonumber(b)) end
  local digits, carry = {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    if d >= 10 then carry = 1; d = d - 10 else carry = 0 end
    digits[#digits + 1] = string.char(48 + d)
  end
  local sum = string.reverse(table.concat(digits))
  if ucmp(sum, U64MAX) > 0 then return nil end
  return sum
end

local function unsigned(s, what)
  if not string.find(s, '^%d+$') then corrupt(what .. ' is not a number: ' .. s) end
  return s
end

local function signed(s, what)
  if not string.find(s, '^%-?%d+$') then corrupt(what .. ' is not a number: ' .. s) end
  return s
end

-- A once marker's expires_at and fingerprint: 'EXPIRES_AT FINGERPRINT', or
-- 'EXPIRES_AT' alone as written before markers carried a fingerprint, whose
-- fingerprint is nil and matches none.
local function marker(s, key)
  local x, f = string.match(s, '^(%-?%d+) (%d+)$')
  if x then return x, f end
  return signed(s, 'once marker ' .. key), nil
end

-- A counter's value at `now`: '0' when it was never added to, or has expired;
-- and its stored expiry: nil when there is no counter, '' when it never expires.
local function counter_at(name, now)
  local stored = redis.call('HMGET', base .. 'ctr:' .. name, 'v', 'x')
  if stored[1] then
    local x = stored[2]
    if not x or live(signed(x, 'expiry of counter ' .. name), now) then
      return unsigned(stored[1], 'counter ' .. name), x or ''
    end
    return '0', x
  end
  return '0', nil
end

-- Whether the guard in ARGV[i], ARGV[i + 1], ARGV[i + 2] (present: '1' or '0',
-- record key, expected value) holds.
local function guard_holds(i)
  if ARGV[i] ~= '1' then return true end
  return redis.call('HGET', base .. 'rec', ARGV[i + 1]) == ARGV[i + 2]
end

-- Whether a scope holding `count` members may take one more under `limit`.
local function room(count, limit)
  return limit == '' or ucmp(string.format('%d', count), limit) < 0
end

-- Redis's clock, in ms since the epoch: read once per script, at its first
-- use (Redis judges expiry as of the script's start anyway), however many keys
-- the script lists or indexes it prunes.
local clock_ms
local function now_ms()
  if not clock_ms then
    local t = redis.call('TIME')
    clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock_ms
end

-- Drops the entries of `index` past their deadline (by Redis's clock).
local function prune(index)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', now_ms()))
end

-- Gives `key` its garbage-collection deadline `at` (ms; '' for never) and lists
-- it as `member` of `index`, which expires with its last entry. A deadline
-- already past by Redis's clock is none: PEXPIREAT would delete the key as it
-- is written (a caller whose clock lags Redis's), and a counter deleted at
-- every charge never reaches its limit.
local function list(key, at, index, member)
  if at ~= '' and tonumber(at) <= now_ms() then at = '' end
  if at == '' then
    redis.call('PERSIST', key)
    redis.call('ZADD', index, 'inf', member)
  else
    redis.call('PEXPIREAT', key, at)
    redis.call('ZADD', index, at, member)
  end
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if last[2] == nil or last[2] == 'inf' then
    redis.call('PERSIST', index)
  else
    redis.call('PEXPIREAT', index, last[2])
  end
end

-- Exclusive counts: `excl` holds, per group, its members no other group holds;
-- `exclv` says they are kept. A scope written before they were has them
-- computed here, once, by the first script that changes its memberships.
local function excl_computed()
  local counts = {}
  for _, g in ipairs(redis.call('ZRANGE', base .. 'groups', 0, -1)) do
    local n = 0
    for _, m in ipairs(redis.call('ZRANGE', base .. 'grp:' .. g, 0, -1)) do
      if redis.call('HGET', base .. 'mem', m) == '1' then n = n + 1 end
    end
    if n > 0 then counts[g] = n end
  end
  return counts
end
local function excl_ready()
  if redis.call('EXISTS', base .. 'exclv') == 1 then return end
  redis.call('DEL', base .. 'excl')
  for g, n in pairs(excl_computed()) do redis.call('HSET', base .. 'excl', g, n) end
  redis.call('SET', base .. 'exclv', '1')
end
local function excl_add(g, by)
  if by ~= 0 and redis.call('HINCRBY', base .. 'excl', g, by) <= 0 then
    redis.call('HDEL', base .. 'excl', g)
  end
end
-- An empty scope leaves no trace.
local function excl_done()
  if redis.call('HLEN', base .. 'mem') == 0 then redis.call('DEL', base .. 'exclv', base .. 'excl') end
end
-- Which of `groups` other than `except` holds `m`, known to be in exactly one:
-- one lookup per group (no index maps a member to its groups).
local function only_group(m, except, groups)
  for _, g in ipairs(groups) do
    if g ~= except and redis.call('ZSCORE', base .. 'grp:' .. g, m) then return g end
  end
  corrupt('member ' .. m .. ' counts a group that holds it nowhere')
end
local function groups_now() return redis.call('ZRANGE', base .. 'groups', 0, -1) end

-- `list`, after dropping the index's entries past their deadline.
local function keep(key, at, index, member)
  prune(index)
  list(key, at, index, member)
end

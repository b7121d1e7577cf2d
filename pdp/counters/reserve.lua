-- pdp counter reservation: check every counter rule of each item, consume all of them only
-- if all pass. One call handles one decision or a whole rollout step (items in order).
--
-- Time: the Redis server's clock (TIME) is the only clock; ARGV[1] adds a fixed offset that
-- is 0 in production (tests shift it). Keys are built here from KEYS[1] = "pdp:{tenant}";
-- the hash tag keeps every one of them in the slot of KEYS[1] (works on Redis Cluster).
--
-- ARGV[1] = offset_ms, ARGV[2] = JSON [bucket_ms, tzs, defs, items] where
--   tzs:   per timezone in use, [bounds_ms..., labels...] (labels: one fewer than bounds)
--   defs:  per distinct rule, [kind, counter, max_count, duration_ms, threshold,
--          min_deployments, tz index]
--   items: per item, [def index, scope, def index, scope, ...]
-- (one JSON string: far cheaper to ship and decode than thousands of ARGV entries)
-- kinds: 1 DAILY_CAP, 2 COOLDOWN, 3 VELOCITY, 4 ROLLBACK_RATE, 5 MIN_STEP_DURATION
-- Returns { now_ms, item... }; an item is {1} (allowed, consumed) or
--   {0, rule position in item, retry_ms (-1: never), a, b, day label}.

local prefix = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local req = cjson.decode(ARGV[2])
local bucket = req[1]

-- numbers handed to redis.call must be plain integers ("1e+12" is not a valid TTL)
local function int(x) return string.format('%d', x) end

-- the local day (of each timezone in use) that contains the server's now
local days = {}
for i, tz in ipairs(req[2]) do
  local n = (#tz + 1) / 2
  local found = nil
  for j = 1, n - 1 do
    if tz[j] <= now and now < tz[j + 1] then
      found = { label = tz[n + j], ends = tz[j + 1] }
    end
  end
  if not found then
    return redis.error_reply('PDPSKEW sidecar clock is more than a day away from the Redis clock')
  end
  days[i] = found
end

local defs = {}
for i, d in ipairs(req[3]) do
  defs[i] = {
    kind = d[1], counter = d[2], max = d[3], dur = d[4], thr = d[5], min_dep = d[6], tz = d[7],
  }
end

-- ROLLBACK_RATE verdicts do not change during one call (reserves record no events)
local rb_cache = {}

local function rollback_verdict(d, scope)
  local ck = scope .. '|' .. int(d.dur) .. '|' .. d.thr .. '|' .. int(d.min_dep)
  local hit = rb_cache[ck]
  if hit then return hit end
  local h = redis.call('HGETALL', prefix .. ':ev:' .. scope)
  local first = math.floor((now - d.dur) / bucket)
  local last = math.floor(now / bucket)
  local dep_of, rb_of, idx = {}, {}, {}
  for i = 1, #h, 2 do
    local b = tonumber(string.sub(h[i], 2))
    if b >= first and b <= last then
      if dep_of[b] == nil then
        dep_of[b], rb_of[b] = 0, 0
        idx[#idx + 1] = b
      end
      if string.sub(h[i], 1, 1) == 'd' then
        dep_of[b] = dep_of[b] + tonumber(h[i + 1])
      else
        rb_of[b] = rb_of[b] + tonumber(h[i + 1])
      end
    end
  end
  table.sort(idx)
  local dep, rb = 0, 0
  for _, b in ipairs(idx) do
    dep = dep + dep_of[b]
    rb = rb + rb_of[b]
  end
  local function denies(dd, rr) return dd >= d.min_dep and rr * 100 > d.thr * dd end
  local res
  if not denies(dep, rb) then
    res = false
  else
    local dd, rr, retry = dep, rb, 0
    for _, b in ipairs(idx) do
      dd = dd - dep_of[b]
      rr = rr - rb_of[b]
      retry = (b + 1) * bucket + d.dur - now
      if not denies(dd, rr) then break end
    end
    res = { retry, rb, dep, '' }
  end
  rb_cache[ck] = res
  return res
end

-- nil when the rule passes (its consumption is queued in commits), else the deny facts
local function check(d, scope, commits)
  local k = d.kind
  if k == 1 then
    local day = days[d.tz]
    local key = prefix .. ':cap:' .. d.counter .. ':' .. scope .. ':' .. day.label
    local n = tonumber(redis.call('GET', key) or '0')
    if n >= d.max then
      local retry = -1
      if d.max > 0 then retry = day.ends - now end
      return { retry, n, 0, day.label }
    end
    commits[#commits + 1] = { 1, key, day.ends - now }
  elseif k == 2 then
    local key = prefix .. ':cool:' .. d.counter .. ':' .. scope
    local last = redis.call('GET', key)
    if last then
      last = tonumber(last)
      if now - last < d.dur then return { last + d.dur - now, last, 0, '' } end
    end
    commits[#commits + 1] = { 2, key, d.dur }
  elseif k == 3 then
    local key = prefix .. ':vel:' .. d.counter .. ':' .. scope
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - d.dur))
    local n = redis.call('ZCARD', key)
    if n >= d.max then
      local retry = -1
      if d.max > 0 then
        local e = redis.call('ZRANGE', key, int(n - d.max), int(n - d.max), 'WITHSCORES')
        retry = tonumber(e[2]) + d.dur - now
      end
      return { retry, n, 0, '' }
    end
    commits[#commits + 1] = { 3, key, d.dur }
  elseif k == 4 then
    local v = rollback_verdict(d, scope)
    if v then return v end
  else
    local last = redis.call('GET', prefix .. ':step:' .. scope)
    if last then
      last = tonumber(last)
      if now - last < d.dur then return { last + d.dur - now, last, 0, '' } end
    end
  end
  return nil
end

local seq = 0

local function commit(c)
  local k, key, ttl = c[1], c[2], c[3]
  if k == 1 then
    if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, int(ttl)) end
  elseif k == 2 then
    redis.call('SET', key, int(now), 'PX', int(ttl))
  else
    repeat
      seq = seq + 1
    until redis.call('ZADD', key, 'NX', int(now), int(now) .. '.' .. seq) == 1
    redis.call('PEXPIRE', key, int(ttl))
  end
end

local out = { now }
for _, item in ipairs(req[4]) do
  local commits = {}
  local denied = nil
  for j = 1, #item / 2 do
    local v = check(defs[item[2 * j - 1]], item[2 * j], commits)
    if v then
      denied = { 0, j, v[1], v[2], v[3], v[4] }
      break
    end
  end
  if denied then
    out[#out + 1] = denied
  else
    local seen = {}
    for _, c in ipairs(commits) do
      if not seen[c[2]] then
        seen[c[2]] = true
        commit(c)
      end
    end
    out[#out + 1] = { 1 }
  end
end
return out

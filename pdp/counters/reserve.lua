-- pdp counter reservation: check every counter rule of each item, consume all of them only
-- if all pass. One call handles one decision or a whole rollout step (items in order).
--
-- Time: the Redis server's clock (TIME) is the only clock; ARGV[1] adds a fixed offset that
-- is 0 in production (tests shift it). Keys are built here from KEYS[1] = "pdp:{tenant}";
-- the hash tag keeps every one of them in the slot of KEYS[1] (works on Redis Cluster).
--
-- ARGV[1] = offset_ms, ARGV[2] = JSON [bucket_ms, tzs, defs, items], ARGV[3] = the epoch
-- marker check (below), ARGV[4] (optional) = '1' for a dry run: every verdict as a
-- reservation would give it, nothing consumed, ARGV[5] (optional, '' for none) = the instant
-- (ms, this script's clock) after which the caller has given up: later, nothing is done and
-- { now_ms, '', '~' } is returned (a call Redis ran only after a pause must not consume
-- what its denied caller never used; lateness.py), ARGV[6] (optional, '' for none) = the
-- call's id: a call that committed something leaves "pdp:{t}:call:<id>" (its flags, for
-- 10 s), and the same call run again (a client retry after a reply lost with its
-- connection) returns { now_ms, flags, '=' } and does nothing: a reservation counts once,
-- however often it is sent, where
--   tzs:   per timezone in use, [bounds_ms..., labels...] (labels: one fewer than bounds)
--   defs:  per distinct rule, [kind, counter, max_count, duration_ms, threshold,
--          min_deployments, keep_ms, keep_count, tz index]; keep_ms: how long a COOLDOWN
--          stamp or VELOCITY push is kept (>= its window: another version of the policy
--          may ask for a longer one), keep_count: the most pushes a VELOCITY set keeps
--   items: per item, [def index, scope, def index, scope, ...]
-- (one JSON string: far cheaper to ship and decode than thousands of ARGV entries)
-- kinds: 1 DAILY_CAP, 2 COOLDOWN, 3 VELOCITY, 4 ROLLBACK_RATE, 5 MIN_STEP_DURATION
-- Returns { now_ms, flags, epoch note, denied... }: flags has one character per item, '1'
--   (allowed, consumed) or '0' (denied); the note is '' (the marker is the one expected) or
--   '+<marker>' (adopted or created: remember it); then, for each denied item in order,
--   {rule position in item, retry_ms (-1: never), a, b, day label}.
--   { now_ms, '', '!<marker found or empty>' }: the tenant's state was lost; nothing done.
--
-- Epoch marker "pdp:{tenant}:epoch" = '<f|a|w>:<id>:<created ms>' (f: created on first use,
-- a: written by `pdp counters ack`, w: re-created after a wait-mode loss). ARGV[3] is
--   '=<marker>'         the marker this sidecar saw: a different 'f' marker or none means
--                       the state was lost; an 'a' / 'w' one is an acknowledgement (adopt)
--   '?<id>'             the sidecar has seen none: adopt the marker, or create it
--   '^<marker> <id>'    wait-mode loss over: write a fresh 'w' marker (unless acked already)
-- A noticed loss sets "pdp:{tenant}:lost" (kept until an ack or a 'w' marker), so that a
-- sidecar started after the loss does not take the empty store for a brand-new one.

local prefix = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local dry = ARGV[4] == '1'
local call_key = nil
if not dry and ARGV[6] and ARGV[6] ~= '' then
  call_key = prefix .. ':call:' .. ARGV[6]
  local prior = redis.call('GET', call_key)
  if prior then return { now, prior, '=' } end
end
if ARGV[5] and ARGV[5] ~= '' and now > tonumber(ARGV[5]) then
  return { now, '', '~' }
end

-- numbers handed to redis.call must be plain integers ("1e+12" is not a valid TTL)
local function int(x) return string.format('%d', x) end
local now_s = int(now)  -- formatted once: a step writes it once per agent

local note = ''
do
  local ekey, lkey = prefix .. ':epoch', prefix .. ':lost'
  local mark = ARGV[3]
  local op = string.sub(mark, 1, 1)
  local cur = redis.call('GET', ekey)
  local function lost(want)
    redis.call('SET', lkey, int(now) .. ' ' .. want, 'NX')
    return { now, '', '!' .. (cur or '') }
  end
  if op == '=' then
    local want = string.sub(mark, 2)
    if cur ~= want then
      if cur and string.sub(cur, 1, 1) ~= 'f' and redis.call('EXISTS', lkey) == 0 then
        note = '+' .. cur
      else
        return lost(want)
      end
    end
  elseif op == '?' then
    if redis.call('EXISTS', lkey) == 1 then return lost('') end
    if not cur then
      cur = 'f:' .. string.sub(mark, 2) .. ':' .. int(now)
      redis.call('SET', ekey, cur)
    end
    note = '+' .. cur
  else
    local sp = string.find(mark, ' ', 1, true)
    local want = string.sub(mark, 2, sp - 1)
    if not (cur and cur ~= want and string.sub(cur, 1, 1) ~= 'f') then
      cur = 'w:' .. string.sub(mark, sp + 1) .. ':' .. int(now)
      redis.call('SET', ekey, cur)
    end
    redis.call('DEL', lkey)
    note = '+' .. cur
  end
end

local req = cjson.decode(ARGV[2])
local bucket = req[1]

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
    kind = d[1], counter = d[2], max = d[3], dur = d[4], thr = d[5], min_dep = d[6],
    keep = d[7], keep_n = d[8], tz = d[9], keep_s = int(d[7]),
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

-- Counts of DAILY_CAP and VELOCITY keys are read from Redis once per call and then kept
-- here; their consumption is written at the end (one INCRBY / one ZADD per key), so a step
-- of a thousand agents on one tenant-wide cap costs a few commands, not thousands. The
-- script is atomic: nobody else sees or changes these keys in between.
local cap_n, cap_add, cap_ttl = {}, {}, {}
local vel_n, vel_add, vel_ttl, vel_most = {}, {}, {}, {}
local vel_keys, cap_keys = {}, {}

local function cap_count(key)
  local n = cap_n[key]
  if n == nil then
    n = tonumber(redis.call('GET', key) or '0')
    cap_n[key] = n
  end
  return n
end

-- pushes in the window: after now - dur (one exactly a window old is out); those older
-- than the rule's keep_ms go. The count is kept for the call (this call's own pushes added
-- as they are committed) and worked out again for a rule with another window on the same
-- key (two versions of one counter), once this call's pushes are written.
local vel_dur, vel_keep = {}, {}
local vel_flush
local function vel_count(key, d)
  if vel_keep[key] == nil or d.keep < vel_keep[key] then  -- (once per key and keep)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - d.keep))
    vel_keep[key] = d.keep
  end
  local n = vel_n[key]
  if n == nil or vel_dur[key] ~= d.dur then
    if n ~= nil then vel_flush(key) end
    n = redis.call('ZCOUNT', key, '(' .. int(now - d.dur), '+inf')
    vel_n[key] = n
    vel_dur[key] = d.dur
  end
  return n
end

-- Members are "<now>.<seq>": unique within a call; members of an earlier call in the same
-- millisecond are skipped over (NX plus the highest seq already stored at this score).
vel_flush = function(key)
  local k = vel_add[key] or 0
  if k == 0 then return end
  local seq = 0
  local same = redis.call('ZRANGEBYSCORE', key, now_s, now_s)
  for _, m in ipairs(same) do
    local s = tonumber(string.match(m, '%.(%d+)$'))
    if s and s > seq then seq = s end
  end
  local args, n, member = {}, 0, now_s .. '.'
  for i = 1, k do
    args[n + 1] = now_s
    args[n + 2] = member .. int(seq + i)
    n = n + 2
    if n >= 2000 or i == k then
      redis.call('ZADD', key, 'NX', unpack(args, 1, n))
      n = 0
    end
  end
  redis.call('ZREMRANGEBYRANK', key, 0, int(-vel_most[key] - 1))  -- the newest keep_count stay
  redis.call('PEXPIRE', key, int(vel_ttl[key]))
  vel_add[key] = 0
end

-- Keys per (definition, scope), built once per call: a step repeats the same pairs.
local key_cache = {}
local function key_of(d, scope, build)
  local per = key_cache[d]
  if per == nil then
    per = {}
    key_cache[d] = per
  end
  local key = per[scope]
  if key == nil then
    key = build(d, scope)
    per[scope] = key
  end
  return key
end
local function cap_key(d, scope)
  return prefix .. ':cap:' .. d.counter .. ':' .. scope .. ':' .. days[d.tz].label
end
local function cool_key(d, scope) return prefix .. ':cool:' .. d.counter .. ':' .. scope end
local function vel_key(d, scope) return prefix .. ':vel:' .. d.counter .. ':' .. scope end

-- COOLDOWN keys' last reservation (false: none), read for the whole call with MGET up
-- front (a step has one such key per agent; a GET each cost more than the reading) and
-- kept as this call's own reservations change them.
local cool_last = {}
do
  local want, nwant = {}, 0
  local function fetch()
    if nwant == 0 then return end
    local got = redis.call('MGET', unpack(want, 1, nwant))
    local found = 0
    for i = 1, nwant do
      cool_last[want[i]] = got[i]
      if got[i] then found = found + 1 end
    end
    -- MGET reads a key of another type as missing; GET refuses it (WRONGTYPE), so where
    -- the counts differ the missing ones are read one by one: the call fails closed, here,
    -- before anything is consumed.
    if redis.call('EXISTS', unpack(want, 1, nwant)) ~= found then
      for i = 1, nwant do
        if not got[i] then redis.call('GET', want[i]) end
      end
    end
    nwant = 0
  end
  for _, item in ipairs(req[4]) do
    for j = 1, #item / 2 do
      local d = defs[item[2 * j - 1]]
      if d.kind == 2 then
        local key = key_of(d, item[2 * j], cool_key)
        if cool_last[key] == nil then
          cool_last[key] = false
          nwant = nwant + 1
          want[nwant] = key
          if nwant >= 1000 then fetch() end
        end
      end
    end
  end
  fetch()
end

-- The consumption an item's passing rules will make: parallel arrays reused across items
-- (kind, key, ttl), ncommit of them in use.
local ckind, ckey, cttl, ncommit = {}, {}, {}, 0
local function queue(kind, key, ttl)
  ncommit = ncommit + 1
  ckind[ncommit], ckey[ncommit], cttl[ncommit] = kind, key, ttl
end

-- nil when the rule passes (its consumption is queued), else the deny facts
local function check(d, scope)
  local k = d.kind
  if k == 1 then
    local day = days[d.tz]
    local key = key_of(d, scope, cap_key)
    local n = cap_count(key)
    if n >= d.max then
      local retry = -1
      if d.max > 0 then retry = day.ends - now end
      return { retry, n, 0, day.label }
    end
    queue(1, key, day.ends - now)
  elseif k == 2 then
    local key = key_of(d, scope, cool_key)
    local last = cool_last[key]
    if last == nil then last = redis.call('GET', key) end
    if last then
      last = tonumber(last)
      if now - last < d.dur then return { last + d.dur - now, last, 0, '' } end
    end
    queue(2, key, d.keep_s)
  elseif k == 3 then
    local key = key_of(d, scope, vel_key)
    local n = vel_count(key, d)
    if n >= d.max then
      local retry = -1
      if d.max > 0 then
        vel_flush(key)  -- the oldest entries in force may be this call's own
        -- free again when the max-th newest push leaves the window
        local e = redis.call('ZRANGE', key, int(-d.max), int(-d.max), 'WITHSCORES')
        retry = tonumber(e[2]) + d.dur - now
      end
      return { retry, n, 0, '' }
    end
    queue(3, key, d.keep)
    vel_most[key] = d.keep_n
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

local function commit(k, key, ttl)
  if k == 1 then
    if not cap_add[key] then
      cap_add[key] = 0
      cap_keys[#cap_keys + 1] = key
    end
    cap_add[key] = cap_add[key] + 1
    cap_n[key] = cap_n[key] + 1
    cap_ttl[key] = ttl
  elseif k == 2 then
    redis.call('SET', key, now_s, 'PX', ttl)  -- ttl: the rule's keep_s, formatted
    cool_last[key] = now_s
  else
    if not vel_ttl[key] then vel_keys[#vel_keys + 1] = key end
    vel_add[key] = (vel_add[key] or 0) + 1
    vel_n[key] = vel_n[key] + 1
    vel_ttl[key] = ttl
  end
end

local out = { now, '', note }
local flags = {}
for n, item in ipairs(req[4]) do
  ncommit = 0
  local denied = nil
  for j = 1, #item / 2 do
    local v = check(defs[item[2 * j - 1]], item[2 * j])
    if v then
      denied = { j, v[1], v[2], v[3], v[4] }
      break
    end
  end
  if denied then
    flags[n] = '0'
    out[#out + 1] = denied
  elseif dry then
    flags[n] = '1'
  else
    flags[n] = '1'
    for i = 1, ncommit do
      local dup = false  -- a key twice in one item (the same rule listed twice) counts once
      for h = 1, i - 1 do
        if ckey[h] == ckey[i] then dup = true end
      end
      if not dup then commit(ckind[i], ckey[i], cttl[i]) end
    end
  end
end
out[2] = table.concat(flags)

for _, key in ipairs(cap_keys) do
  local add = cap_add[key]
  if add > 0 then
    -- The key lives until the end of its day in the rule's zone as it is now. A new
    -- version of the policy may move the zone (UTC -> America/Los_Angeles): the key, named
    -- by the date alone, keeps counting, and its expiry moves out if the day now ends later
    -- (never in: an earlier end only leaves a finished day's key a while longer).
    local want = int(cap_ttl[key])
    if redis.call('INCRBY', key, add) == add or redis.call('PTTL', key) < tonumber(want) then
      redis.call('PEXPIRE', key, want)
    end
  end
end
for _, key in ipairs(vel_keys) do vel_flush(key) end
if call_key and string.find(out[2], '1', 1, true) then
  redis.call('SET', call_key, out[2], 'PX', 10000)
end
return out

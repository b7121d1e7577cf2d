-- pdp outcome events: deploy / rollback counts in time buckets (ROLLBACK_RATE) and the
-- instant of the last step advance (MIN_STEP_DURATION), under each scope given.
--
-- KEYS[1] = "pdp:{tenant}" (all keys are built from it and share its hash slot).
-- ARGV: offset_ms, kind ('d' deploy, 'r' rollback, 's' step advance), bucket_ms,
--       retention_ms, event key (escaped; '' for none), call id ('' for none), scope...
-- A call that recorded leaves "pdp:{t}:call:<id>" for 10 s: the same call run again (a
-- client retry after a reply lost with its connection) returns 1 and records nothing.
-- Time is the Redis server's clock (TIME) plus offset_ms (0 in production).
-- With an event key the event is recorded at most once per (kind, key, scope) within the
-- retention: a rollback reported by EvaluateHealth and again by the rollout engine counts
-- once, and the second report adds the scopes the first did not name (its agent).
-- Returns 1 when recorded under any scope, 0 when every scope had it already.

local prefix = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local kind = ARGV[2]
local bucket = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local b = math.floor(now / bucket)
local function int(x) return string.format('%d', x) end
local max_fields = 2 * (math.floor(retention / bucket) + 2)

local call_key = nil
if ARGV[6] ~= '' then
  call_key = prefix .. ':call:' .. ARGV[6]
  if redis.call('EXISTS', call_key) == 1 then return 1 end
end

local recorded = 0
for i = 7, #ARGV do
  local scope = ARGV[i]
  if ARGV[5] ~= '' and not redis.call('SET', prefix .. ':evid:' .. kind .. ':' .. ARGV[5]
                                      .. ':' .. scope, '1', 'NX', 'PX', int(retention)) then
    -- recorded under this scope already
  elseif kind == 's' then
    recorded = 1
    redis.call('SET', prefix .. ':step:' .. scope, int(now), 'PX', int(retention))
  else
    recorded = 1
    local key = prefix .. ':ev:' .. scope
    redis.call('HINCRBY', key, kind .. int(b), 1)
    redis.call('PEXPIRE', key, int(retention + bucket))
    if redis.call('HLEN', key) > max_fields then
      -- drop buckets older than the retention so the hash stays bounded
      local oldest = math.floor((now - retention) / bucket)
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if tonumber(string.sub(f, 2)) < oldest then redis.call('HDEL', key, f) end
      end
    end
  end
end
if call_key and recorded == 1 then
  redis.call('SET', call_key, '1', 'PX', 10000)
end
return recorded

-- One edge's grant of a capped relay's concurrency (see lease.rs).
-- KEYS[1]: the relay's hash, <prefix>cap:<relay>; one field per edge,
--   'grant:want:expiry' (expiry in ms of Redis TIME).
-- ARGV: edge id, cap, want, in flight, lease (ms).
-- Returns {grant, fair share, edges that want some (this one included)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local cap = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local held = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local others, wants = 0, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= me then
    local g, w, e = string.match(fields[i + 1], '^(%d+):(%d+):(%d+)$')
    if not g or tonumber(e) <= now then
      -- Expired (its edge died or went silent) or unreadable: reaped.
      redis.call('HDEL', KEYS[1], fields[i])
    else
      others = others + tonumber(g)
      if tonumber(w) > 0 then wants[#wants + 1] = tonumber(w) end
    end
  end
end
if want <= 0 then
  redis.call('HDEL', KEYS[1], me)
  return {0, 0, #wants}
end
-- The fair share: max-min fair (water-filling) over what each edge wants.
wants[#wants + 1] = want
table.sort(wants)
local left, n, fair = cap, #wants, want
for _, w in ipairs(wants) do
  local level = math.floor(left / n)
  if w > level then
    fair = math.min(want, level)
    break
  end
  left, n = left - w, n - 1
end
-- Never below what it holds already (released as its requests end), and
-- never more than the others leave.
local grant = math.min(want, math.max(fair, held), math.max(cap - others, 0))
redis.call('HSET', KEYS[1], me, grant .. ':' .. want .. ':' .. (now + lease))
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {grant, fair, #wants}

//! The Lua scripts. Each touches one key (its session's bucket), so that
//! they run on Redis Cluster too; the per-upstream index sets are updated
//! next to them, and the sweep's repair pass mends what a crash between
//! the two writes left behind. A value that starts with `/` is a newer
//! record format (see [`super::record`]): no script rewrites or sweeps it.

use redis::Script;

/// Claim: keep the pin in force (returned), or set ours (returns nil).
pub const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return cur end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return false
";

/// Compare-and-set: replace the value only if its upstream is still ARGV[2]
/// (or the session is gone); publish. Returns {moved, value in force}.
pub const REPIN: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.match(cur, '^[^\t]*') ~= ARGV[2] then return {0, cur} end
if cur and string.sub(cur, 1, 1) == '/' then return {0, cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1, ARGV[3]}
";

/// Admin pin: move to upstream ARGV[2] keeping the rest of the record (or
/// ARGV[3] as a new record), with metadata ARGV[6] unless empty (the
/// tenant field, see [`super::record`], is kept before it); publish.
/// Returns the old value or nil.
pub const PIN: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[3]
if cur then
  local rest = string.match(cur, '^[^\t]*(\t.*)$')
  if rest then value = ARGV[2] .. rest end
end
if ARGV[6] ~= '' then
  local base = string.match(value, '^([^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*)')
  local tenant = string.match(value, '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)')
  if base and tenant and #tenant == 16 and not string.find(tenant, '%X') then
    base = base .. '\t' .. tenant
  end
  value = (base or value) .. '\t' .. ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return cur or false
";

/// Forget: delete and publish. Returns the old value or nil.
pub const FORGET: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return cur or false
";

/// Purge by ids (one batch of an upstream's index, this bucket's share):
/// delete each of ARGV[2..] whose pin still names upstream ARGV[1].
/// Returns a code per id: 1 deleted, 0 not pinned there (gone, or moved:
/// a stale index entry), 2 a newer format (left alone).
pub const PURGE_IDS: &str = r"
local out = {}
for i = 2, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local code = 0
  if cur then
    if string.sub(cur, 1, 1) == '/' then
      code = 2
    elseif string.match(cur, '^[^\t]*') == ARGV[1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      code = 1
    end
  end
  out[#out + 1] = code
end
return out
";

/// Move by ids: each pair ARGV[i], ARGV[i + 1] (an id and its new
/// upstream) whose pin still names upstream ARGV[1] is re-pinned there,
/// keeping the rest of its record. Codes as [`PURGE_IDS`], 1 for moved.
pub const MOVE_IDS: &str = r"
local out = {}
for i = 2, #ARGV - 1, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local code = 0
  if cur then
    local up, rest = string.match(cur, '^([^\t]*)(.*)$')
    if string.sub(cur, 1, 1) == '/' then
      code = 2
    elseif up == ARGV[1] then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. rest)
      code = 1
    end
  end
  out[#out + 1] = code
end
return out
";

/// Purge a whole bucket: every record of tenant ARGV[1] (its hash, the
/// record's sixth field), or every record if ARGV[1] is ''. Records of a
/// newer format are left alone. Returns {id, upstream, ...} of those
/// deleted, for their index sets.
pub const PURGE_BUCKET: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local gone, ids = {}, {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, 1) ~= '/' then
    local hit = ARGV[1] == ''
    if not hit then
      hit = string.match(v, '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)') == ARGV[1]
    end
    if hit then
      ids[#ids + 1] = all[i]
      gone[#gone + 1] = all[i]
      gone[#gone + 1] = string.match(v, '^([^\t]*)')
    end
  end
end
for i = 1, #ids, 1000 do
  redis.call('HDEL', KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
end
return gone
";

/// Renewal: set last seen ARGV[3] and add counter deltas, if the session is
/// still on upstream ARGV[2]. Returns 1 done, 0 missing, 2 moved elsewhere
/// (or a newer format), 3 malformed.
pub const TOUCH: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local up, c, l, r, e, rest = string.match(cur, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)(.*)$')
if not up then return 3 end
if up ~= ARGV[2] then return 2 end
if not (tonumber(r) and tonumber(e)) then return 3 end
redis.call('HSET', KEYS[1], ARGV[1], up .. '\t' .. c .. '\t' .. ARGV[3] .. '\t' .. (tonumber(r) + tonumber(ARGV[4])) .. '\t' .. (tonumber(e) + tonumber(ARGV[5])) .. rest)
return 1
";

/// Sweep one bucket: remove sessions last seen before ARGV[1], and
/// malformed ones. Returns {expired, live, malformed}: the first a flat
/// list {id, upstream, life in ms, ...} (life: first to last request), the
/// second {id, upstream, ...} (the live ones, for the index repair; empty
/// unless ARGV[2] is '1'), the last the ids of the malformed records removed.
pub const SWEEP: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local removed, live, malformed = {}, {}, {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, 1) ~= '/' then
    local up, c, l = string.match(v, '^([^\t]+)\t([^\t]*)\t([^\t]*)')
    local seen = l and tonumber(l)
    if not seen then
      redis.call('HDEL', KEYS[1], all[i])
      malformed[#malformed + 1] = all[i]
    elseif seen < tonumber(ARGV[1]) then
      redis.call('HDEL', KEYS[1], all[i])
      removed[#removed + 1] = all[i]
      removed[#removed + 1] = up
      removed[#removed + 1] = string.format('%d', math.max(0, seen - (tonumber(c) or seen)))
    elseif ARGV[2] == '1' then
      live[#live + 1] = all[i]
      live[#live + 1] = up
    end
  end
end
return {removed, live, malformed}
";

/// Repair: delete ARGV[1] if its value is still ARGV[2] (a malformed record
/// this edge read); publish. Returns 1 if deleted.
pub const DISCARD: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// The fleet's sweep lease, on one key of its own: if no edge holds it
/// (its `until` has passed), take it until ARGV[1] + ARGV[2] and advance
/// the shared bucket cursor by ARGV[3]; returns the cursor this round
/// starts at, or -1 if another edge holds the lease. The value is `until
/// cursor holder`; it never expires, so the cursor survives every edge.
/// Times are the edges' clocks: a skew only makes a round come sooner or
/// later (two rounds at once sweep different buckets).
pub const LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
local held, cursor = 0, 0
if v then
  local u, c = string.match(v, '^(%d+) (%d+)')
  held, cursor = tonumber(u) or 0, tonumber(c) or 0
end
local now = tonumber(ARGV[1])
if held > now then return -1 end
redis.call('SET', KEYS[1], string.format('%d %d %s', now + tonumber(ARGV[2]), cursor + tonumber(ARGV[3]), ARGV[4]))
return cursor
";

/// A tenant's new sessions in one hour, on the tenant's own key (its hash
/// in the hash tag): if fewer than ARGV[1] were counted, count one more
/// (the key expires ARGV[2] seconds after its first count). Returns {1 if
/// counted, the count}. A refusal does not count.
pub const NEW_SESSION: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if n >= tonumber(ARGV[1]) then return {0, n} end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {1, n}
";

/// Every script, loaded once.
pub struct Scripts {
    pub claim: Script,
    pub repin: Script,
    pub pin: Script,
    pub forget: Script,
    pub touch: Script,
    pub sweep: Script,
    pub discard: Script,
    pub lease: Script,
    /// A capped relay's grant to this edge ([`crate::capacity::lease`]).
    pub capacity: Script,
    pub new_session: Script,
    pub purge_ids: Script,
    pub move_ids: Script,
    pub purge_bucket: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            claim: Script::new(CLAIM),
            repin: Script::new(REPIN),
            pin: Script::new(PIN),
            forget: Script::new(FORGET),
            touch: Script::new(TOUCH),
            sweep: Script::new(SWEEP),
            discard: Script::new(DISCARD),
            lease: Script::new(LEASE),
            capacity: Script::new(crate::capacity::lease::SCRIPT),
            new_session: Script::new(NEW_SESSION),
            purge_ids: Script::new(PURGE_IDS),
            move_ids: Script::new(MOVE_IDS),
            purge_bucket: Script::new(PURGE_BUCKET),
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    #[test]
    fn the_sweep_reply_decodes() {
        let bulk = |b: &[u8]| Value::BulkString(b.to_vec());
        for reply in [
            Value::Array(vec![
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![
                Value::Array(vec![]),
                Value::Array(vec![bulk(b"f1"), bulk(b"relay-a")]),
                Value::Array(vec![bulk(&[0u8; 16])]),
            ]),
        ] {
            let decoded =
                redis::from_redis_value::<(Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>)>(&reply);
            assert!(decoded.is_ok(), "{reply:?}: {decoded:?}");
        }
    }
}

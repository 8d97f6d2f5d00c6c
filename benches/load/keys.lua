-- wrk script: GET /v1/messages with x-session-id: key-N, N uniform in 0..9999.
-- Requests are built once in init() so the Lua cost per request is one lookup.
local reqs = {}

function init(args)
   math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
   for n = 0, 9999 do
      reqs[n + 1] = wrk.format("GET", "/v1/messages", { ["x-session-id"] = "key-" .. n })
   end
end

function request()
   return reqs[math.random(1, 10000)]
end

-- One machine-readable line; latencies are in microseconds in wrk.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d requests=%d\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      e.connect + e.read + e.write + e.status + e.timeout, summary.requests))
end

-- wrk script for bench_serve.py: POST /continue with bodies read from a file (one JSON per line).
-- Each wrk thread starts at its own offset, so that uncached runs never repeat a body.
-- done() prints one line "WRKJSON {...}" with the latency percentiles in microseconds.

local threads = {}
local bodies = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  local n_threads = tonumber(args[2]) or 1
  counter = (id or 0) * math.floor(#bodies / n_threads)
  wrk.method = "POST"
  wrk.path = "/continue"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"mean_us":%.1f,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, latency.mean, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end

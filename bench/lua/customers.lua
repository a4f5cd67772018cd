-- wrk script for cellroute's benchmarks.
--
-- Every request carries `x-customer-id`, cycling through the ids given after `--` on the wrk
-- command line (each thread starts at a different offset). At the end it prints one line,
-- `BENCH {json}`, with the counts, errors and latency percentiles in microseconds, which
-- bench/bench.py parses.
--
--   wrk -t2 -c64 -d10s -s bench/lua/customers.lua http://127.0.0.1:PORT/ -- id1 id2 unknown

local customers = {"unknown"}
local counter = 0
local thread_offset = 0
local threads = {}

setup = function(thread)
  thread:set("thread_offset", #threads * 7)
  table.insert(threads, thread)
end

init = function(args)
  if #args > 0 then
    customers = args
  end
  counter = thread_offset
end

request = function()
  counter = counter + 1
  local id = customers[(counter % #customers) + 1]
  return wrk.format("GET", "/", {["x-customer-id"] = id})
end

done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"err_connect\":%d,\"err_read\":%d,\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"p999_us\":%d,\"max_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end

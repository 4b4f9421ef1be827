-- Durable transfers of 1 between two distinct accounts chosen at random
-- among b-1 .. b-ACCOUNTS (default 10,000), each with a fresh id (unique
-- across runs: the thread and eight bytes of /dev/urandom prefix it).
-- Usage: wrk -t1 -c64 -d8s --latency -s transfer_many.lua http://HOST:PORT/
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
-- Eight random bytes as hex, or the time when /dev/urandom cannot be read.
local function token()
  local f = io.open("/dev/urandom", "rb")
  if not f then return tostring(os.time()) end
  local bytes = f:read(8)
  f:close()
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
  prefix = "s" .. token() .. "-" .. (tid or 0) .. "-"
  n = 0
end
function request()
  local from = math.random(1, accounts)
  local to = math.random(1, accounts - 1)
  if to >= from then to = to + 1 end
  n = n + 1
  local body = '{"id":"' .. prefix .. n .. '","from":"b-' .. from .. '","to":"b-' .. to .. '","amount":1}'
  return wrk.format("POST", "/v1/transfers", { ["Content-Type"] = "application/json" }, body)
end

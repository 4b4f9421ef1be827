-- Durable deposits of 1 spread over ACCOUNTS accounts b-1 .. b-ACCOUNTS
-- (default 10,000), one chosen at random per request.
-- Usage: wrk -t1 -c64 -d8s --latency -s deposit_many.lua http://HOST:PORT/
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local headers = { ["Content-Type"] = "application/json" }
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end
function request()
  local id = math.random(1, accounts)
  return wrk.format("POST", "/v1/accounts/b-" .. id .. "/deposits", headers, '{"amount": 1}')
end

-- Durable transfers of 1 between two distinct accounts chosen at random
-- among b-1 .. b-ACCOUNTS (default 10,000), each with a fresh id.
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
  prefix = "s" .. os.time() .. "-" .. (tid or 0) .. "-"
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

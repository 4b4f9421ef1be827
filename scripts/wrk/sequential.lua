-- Walks ids m-1 .. m-N (N from the environment variable COUNT), one per
-- request and wrapping around; METHOD is PUT (open), GET (activate) or
-- FUND (deposit 1,000,000).
local count = tonumber(os.getenv("COUNT") or "100000")
local method = os.getenv("METHOD") or "GET"
local prefix = os.getenv("PREFIX") or "m-"
local i = 0
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % count + 1
  if method == "FUND" then
    return wrk.format("POST", "/v1/accounts/" .. prefix .. i .. "/deposits", nil, '{"amount":1000000}')
  end
  local body = nil
  if method == "PUT" then body = "{}" end
  return wrk.format(method, "/v1/accounts/" .. prefix .. i, nil, body)
end

-- Durable deposits spread over 10,000 accounts (b-1 .. b-10000).
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount": 1}'
request = function()
  return wrk.format(nil, "/v1/accounts/b-" .. math.random(1, 10000) .. "/deposits")
end

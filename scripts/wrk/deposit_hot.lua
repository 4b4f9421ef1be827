-- Durable deposits of 1 on one hot account: the URL's path, or
-- /v1/accounts/hot/deposits when the URL has none (as benches/peers/bench.sh
-- and the A/B scripts call every scenario with the server's root).
-- Usage: wrk -t1 -c64 -d8s --latency -s deposit_hot.lua http://HOST:PORT/
if wrk.path == "/" then wrk.path = "/v1/accounts/hot/deposits" end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount": 1}'

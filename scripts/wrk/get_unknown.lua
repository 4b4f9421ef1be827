-- GET /v1/accounts/<random id never opened>: every request names a new actor.
-- Usage: wrk -t1 -c64 -d5s -s get_unknown.lua http://HOST:PORT/
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  return wrk.format("GET", "/v1/accounts/ghost-" .. math.random(1, 1000000000))
end

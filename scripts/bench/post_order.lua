-- POST /v1/orders: each request a new order for a random seeded customer.
local token = os.getenv("TOKEN")
local customers = tonumber(os.getenv("CUSTOMERS") or "1000")

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init(args)
  math.randomseed(seed or os.time())
end

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = string.format('{"customer_id":%d,"item":"bench-kit","amount":"12.50"}', math.random(101, customers))
  return wrk.format(nil, "/v1/orders", nil, body)
end

-- GET /v1/orders/{id} for random seeded orders.
local token = os.getenv("TOKEN")
local orders = tonumber(os.getenv("ORDERS") or "5000")

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init(args)
  math.randomseed(seed or os.time())
end

wrk.headers["Authorization"] = "Bearer " .. token

function request()
  return wrk.format("GET", "/v1/orders/" .. math.random(orders))
end

-- GET /v1/customers?limit=20: each customer carries its 5 orders.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.path = "/v1/customers?limit=20"

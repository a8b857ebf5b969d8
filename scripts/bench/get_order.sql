-- The statement one GET /v1/orders/{id} runs (store.go: getOrder).
\set oid random(1, :orders)
SELECT o.id, o.customer_id, o.item, o.amount, o.currency, o.time, o.created_by,
       n.channel, n.status, n.attempts, n.last_error, n.sent_at, n.delivered_at
FROM orders o
LEFT JOIN LATERAL (
	SELECT channel, status, attempts, last_error, sent_at, delivered_at FROM notifications
	WHERE order_id = o.id LIMIT 1
) n ON true WHERE o.id = :oid;

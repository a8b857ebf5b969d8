-- The statements one GET /v1/customers?limit=20 runs (store.go: listCustomers, attachOrders).
SELECT id, code, name, phone, email, created_by, created_at FROM customers WHERE id > 0 ORDER BY id LIMIT 21;
SELECT o.* FROM unnest('{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20}'::bigint[]) AS c (id) CROSS JOIN LATERAL (SELECT o.id, o.customer_id, o.item, o.amount, o.currency, o.time, o.created_by,
		       n.channel, n.status, n.attempts, n.last_error, n.sent_at, n.delivered_at
		FROM orders o
		LEFT JOIN LATERAL (
			SELECT channel, status, attempts, last_error, sent_at, delivered_at FROM notifications
			WHERE order_id = o.id LIMIT 1
		) n ON true
			WHERE o.customer_id = c.id ORDER BY o.time DESC, o.id DESC LIMIT 51
		) o
		ORDER BY o.customer_id, o.time DESC, o.id DESC;

-- The statement one POST /v1/orders runs (store.go: placeSQL), for one
-- order without an Idempotency-Key, with the customer id passed as a
-- parameter; the notification is inserted as sent so that the idle service's
-- worker leaves it alone.
\set cid random(101, :customers)
WITH found AS (
	SELECT i.ordinality AS n, i.item, i.amount, i.currency, i.time, c.id AS customer_id, i.channel = 'none' AS silent,
		CASE WHEN a.recipient IS NULL AND NOT i.explicit THEN 'sms' ELSE i.channel END AS channel,
		COALESCE(a.recipient, CASE WHEN NOT i.explicit THEN c.phone END) AS recipient
	FROM ROWS FROM (jsonb_to_recordset(jsonb_build_array(jsonb_build_object('customer_id', :cid::bigint,
		'customer_code', '', 'item', 'bench-kit', 'amount', '12.50', 'currency', 'KES', 'time', now(), 'channel', 'sms',
		'address', 'phone', 'explicit', false))) AS (customer_id bigint, customer_code text, item text,
		amount numeric, currency text, time timestamptz, channel text, address text, explicit bool)) WITH ORDINALITY AS i
	LEFT JOIN customers c ON c.id = i.customer_id OR c.code = i.customer_code
	LEFT JOIN LATERAL (SELECT CASE i.address WHEN 'phone' THEN c.phone WHEN 'email' THEN c.email END AS recipient) a ON true
), verdict AS (
	SELECT NOT false AND bool_and(customer_id IS NOT NULL AND (silent OR recipient IS NOT NULL)) AS ok FROM found
), routed AS MATERIALIZED (
	SELECT found.*, CASE WHEN ok THEN nextval('orders_id_seq') END AS id FROM found, verdict
), key AS (
	INSERT INTO idempotency_keys (subject, key, request_hash, order_id)
	SELECT 'bench', '', NULL::bytea, (SELECT id FROM routed WHERE n = 1) FROM verdict WHERE ok AND '' <> ''
	ON CONFLICT DO NOTHING
	RETURNING order_id
), placed AS (
	INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
	SELECT id, customer_id, item, amount, currency, time, 'bench' FROM routed
	WHERE id IS NOT NULL AND ('' = '' OR EXISTS (SELECT FROM key))
	RETURNING id
), queued AS (
	INSERT INTO notifications (order_id, channel, recipient, status)
	SELECT id, channel, recipient, 'sent' FROM routed WHERE NOT silent AND id IN (SELECT id FROM placed)
)
SELECT r.customer_id, r.silent OR r.recipient IS NOT NULL, CASE WHEN r.silent THEN 'none' ELSE r.channel END,
	p.id, r.id IS NOT NULL
FROM routed r LEFT JOIN placed p USING (id)
ORDER BY r.n;

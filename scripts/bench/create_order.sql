-- The statement one POST /v1/orders runs (store_orders.go: placeSQL), for one
-- order without an Idempotency-Key; the notification is inserted as sent so
-- that the idle service's worker leaves it alone.
\set cid random(101, :customers)
WITH input AS (
SELECT * FROM unnest(ARRAY[:cid]::bigint[], ARRAY['']::text[], ARRAY['bench-kit']::text[], ARRAY['12.50']::numeric[], ARRAY['KES']::text[], ARRAY[now()]::timestamptz[],
ARRAY['sms']::text[], ARRAY['phone']::text[], ARRAY[false]::bool[])
WITH ORDINALITY AS i (customer_id, customer_code, item, amount, currency, time, channel, address, explicit, n)
), found AS (
SELECT i.*, c.id AS found_id, c.phone, i.channel = 'none' AS silent,
CASE i.address WHEN 'phone' THEN c.phone WHEN 'email' THEN c.email END AS address_found
FROM input i LEFT JOIN customers c ON c.id = i.customer_id OR c.code = i.customer_code
), routed AS MATERIALIZED (
SELECT n, item, amount, currency, time, found_id AS customer_id, silent,
CASE WHEN address_found IS NULL AND NOT explicit THEN 'sms' ELSE channel END AS channel,
COALESCE(address_found, CASE WHEN NOT explicit THEN phone END) AS recipient,
nextval('orders_id_seq') AS id
FROM found
), verdict AS (
SELECT NOT false AND bool_and(customer_id IS NOT NULL AND (silent OR recipient IS NOT NULL)) AS ok FROM routed
), key AS (
INSERT INTO idempotency_keys (subject, key, request_hash, order_id)
SELECT 'bench', '', NULL::bytea, (SELECT id FROM routed WHERE n = 1) FROM verdict WHERE ok AND '' <> ''
ON CONFLICT DO NOTHING
RETURNING order_id
), placed AS (
INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
SELECT id, customer_id, item, amount, currency, time, 'bench' FROM routed
WHERE (SELECT ok FROM verdict) AND ('' = '' OR EXISTS (SELECT FROM key))
RETURNING id
), queued AS (
INSERT INTO notifications (order_id, channel, recipient, status)
SELECT id, channel, recipient, 'sent' FROM routed WHERE NOT silent AND id IN (SELECT id FROM placed)
)
SELECT r.customer_id, r.silent OR r.recipient IS NOT NULL, CASE WHEN r.silent THEN 'none' ELSE r.channel END,
p.id, (SELECT ok FROM verdict)
FROM routed r LEFT JOIN placed p USING (id)
ORDER BY r.n;

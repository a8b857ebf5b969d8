-- The statements one POST /v1/orders runs (store_orders.go: placeOrders); the
-- notification is inserted as sent so that the idle service's worker leaves it alone.
\set cid random(101, :customers)
SELECT id, code, name, phone, email, created_by, created_at FROM customers
  WHERE id = ANY(ARRAY[:cid]::bigint[]) OR code = ANY('{}'::text[]);
SELECT nextval(pg_get_serial_sequence('orders', 'id')) AS oid FROM generate_series(1, 1) \gset
WITH placed AS (
  INSERT INTO orders (id, customer_id, item, amount, currency, time, created_by)
  SELECT id, customer_id, item, amount, currency, time, 'bench'
  FROM unnest(ARRAY[:oid]::bigint[], ARRAY[:cid]::bigint[], ARRAY['bench-kit']::text[], ARRAY['12.50']::numeric[], ARRAY['KES']::text[], ARRAY[now()]::timestamptz[])
    AS o (id, customer_id, item, amount, currency, time)
)
INSERT INTO notifications (order_id, channel, recipient, subject, message, status)
SELECT *, 'sent' FROM unnest(ARRAY[:oid]::bigint[], ARRAY['sms']::text[], ARRAY['+254700000000']::text[], ARRAY['Order placed']::text[], ARRAY['Hi Amina, your order for bench-kit (KES 12.50) has been placed. Thank you!']::text[]);

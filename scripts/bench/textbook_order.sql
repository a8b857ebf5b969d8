-- The reference: the textbook transaction for placing an order with its
-- outbox row, which POST /v1/orders is measured against.
\set cid random(101, :customers)
BEGIN;
INSERT INTO orders (customer_id, item, amount, currency, time, created_by)
  VALUES (:cid, 'bench-kit', 12.50, 'KES', now(), 'bench') RETURNING id AS oid \gset
INSERT INTO notifications (order_id, channel, recipient, status) VALUES (:oid, 'sms', '+254700000000', 'sent');
COMMIT;

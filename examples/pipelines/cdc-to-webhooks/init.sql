-- The table whose changes become webhooks (run in the `shop` database).
CREATE TABLE IF NOT EXISTS orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    status text NOT NULL,
    total numeric(12, 2) NOT NULL
);

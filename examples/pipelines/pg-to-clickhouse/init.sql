-- The captured table (run in the `shop` database before the connectors start).
CREATE TABLE IF NOT EXISTS public.accounts (
    id       integer PRIMARY KEY,
    owner    text NOT NULL,
    balance  bigint NOT NULL,
    note     text
);

-- The table captured by the example pipeline (pg-cdc-to-webhook.compose.yml).
create table orders (
  id bigserial primary key,
  customer text not null,
  amount numeric(12, 2) not null,
  created_at timestamptz not null default now()
);

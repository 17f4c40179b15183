-- Runs once, when the ClickHouse volume is empty (docker-entrypoint-initdb.d).
CREATE DATABASE IF NOT EXISTS analytics;
CREATE TABLE IF NOT EXISTS analytics.events
(
    id UInt64,
    ts DateTime,
    kind LowCardinality(String),
    value Float64,
    tags Array(String),
    _topic LowCardinality(String),
    _offset UInt64,
    _batch LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (kind, ts, id);

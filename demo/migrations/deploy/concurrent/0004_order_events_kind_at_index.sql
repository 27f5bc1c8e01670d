-- 0004_order_events_kind_at_index: the new dashboard reads the event log by kind and time.
-- Built CONCURRENTLY: the table stays writable while the index is built (which cannot
-- happen inside a transaction, hence the marker below for migrate.sh).
-- migrate: no-transaction

create index concurrently order_events_kind_at_idx on order_events (kind, at);

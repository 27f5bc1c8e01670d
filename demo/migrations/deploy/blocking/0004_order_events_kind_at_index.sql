-- 0004_order_events_kind_at_index: the new dashboard reads the event log by kind and time.
-- Built as most first attempts are: a plain CREATE INDEX holds a SHARE lock on the
-- table until it is done, and every insert into the log waits for it.

create index order_events_kind_at_idx on order_events (kind, at);

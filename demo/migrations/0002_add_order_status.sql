-- 0002_add_order_status: track where each order is. Existing orders were all paid,
-- so the default fills them in; the check constraint holds on production data.

alter table orders
    add column status text not null default 'paid'
        check (status in ('pending', 'paid', 'shipped', 'cancelled', 'refunded'));

create index orders_status_created_at_idx on orders (status, created_at);

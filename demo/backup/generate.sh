#!/bin/sh
# Generate the demo's sample "production" backups into demo/backups/.
#
# Builds the shop database in a temporary PostgreSQL cluster (unix socket only, in a
# mktemp directory under /tmp), installs release v1 with its own migrate.sh, fills it
# with deterministic sample data and writes two pg_dump custom-format archives:
#
#   shop-zz-older.dump      the state before the last orders came in
#   shop-2026-nightly.dump  the full state, dumped at least one second later
#
# The older archive sorts last by name and is touched last, so it is also the newest
# by modification time: only the creation time recorded inside each archive
# (`pg_restore -l FILE`, "; Archive created at ...") tells that the nightly one is
# the latest backup.
#
# Production's data has about 20 customers (per unit of scale) whose emails equal
# another customer's up to letter case; release v3's migration trips over them.
#
# Environment (all optional):
#   SHOP_SCALE       multiplies every row count (default 1: 3000 customers, 200
#                    products, 8000 orders, ~20000 order items; archives ~0.2 MB each)
#   SHOP_FILLER_KB   KiB of incompressible text appended to each product description
#                    (default 0 when SHOP_SCALE=1, else 20: SHOP_SCALE=300 gives an
#                    archive of about 1 GB)
#   SHOP_EVENTS      rows of order_events, the shop's event log (default 0): a table
#                    large enough (2000000: about a second to index) that a migration which
#                    locks it makes the traffic wait, for a rehearsed deploy
#   SHOP_BACKUP_DIR  output directory (default: demo/backups next to this script)
#   PG_BINDIR        PostgreSQL server binaries (default: `pg_config --bindir`)
#
# Idempotent: does nothing when both archives exist, were made with the same settings
# and are newer than this script and release v1. As root, the temporary cluster runs
# as user nobody (PostgreSQL refuses to run as root); the temporary directory and the
# server are removed on every exit path.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
demo=$(dirname "$here")
sh "$demo/build-releases.sh"
v1="$demo/build/releases/v1"
out=${SHOP_BACKUP_DIR:-$demo/backups}
scale=${SHOP_SCALE:-1}
case $scale in
    '' | *[!0-9]* | 0*) echo "generate: SHOP_SCALE must be a positive integer, not '$scale'" >&2; exit 2 ;;
esac
if [ "$scale" = 1 ]; then filler_kb=${SHOP_FILLER_KB:-0}; else filler_kb=${SHOP_FILLER_KB:-20}; fi
case $filler_kb in
    '' | *[!0-9]*) echo "generate: SHOP_FILLER_KB must be a whole number, not '$filler_kb'" >&2; exit 2 ;;
esac

older="$out/shop-zz-older.dump"
nightly="$out/shop-2026-nightly.dump"
stamp="$out/.generated"
events=${SHOP_EVENTS:-0}
case $events in
    '' | *[!0-9]*) echo "generate: SHOP_EVENTS must be a whole number, not '$events'" >&2; exit 2 ;;
esac
settings="scale=$scale filler_kb=$filler_kb events=$events"

if [ -f "$older" ] && [ -f "$nightly" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$settings" ] &&
    [ -z "$(find "$here/generate.sh" "$demo/shop" "$demo/migrations/0001_init.sql" \( -newer "$older" -o -newer "$nightly" \) -print)" ]; then
    echo "generate: backups in $out are up to date ($settings); nothing to do"
    exit 0
fi

bindir=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
if [ ! -x "$bindir/initdb" ]; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
if [ ! -x "$bindir/initdb" ]; then
    echo "generate: cannot find initdb; set PG_BINDIR to PostgreSQL's bin directory" >&2
    exit 1
fi

started=$(date +%s)
tmp=$(mktemp -d /tmp/shop-backup.XXXXXXXX)
if [ "$(id -u)" = 0 ]; then
    chown nobody:nogroup "$tmp"
    as_db() { setpriv --reuid=nobody --regid=nogroup --init-groups "$@"; }
else
    as_db() { "$@"; }
fi

cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -f "$tmp/data/postmaster.pid" ]; then
        as_db "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ "$status" != 0 ] && [ -s "$tmp/postgres.log" ]; then
        echo "generate: failed; the temporary server's log ends with:" >&2
        tail -n 20 "$tmp/postgres.log" >&2
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$tmp"    # the server user must be able to stay in its working directory
as_db "$bindir/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; exit 1; }
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$tmp'
port = 5432
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = '4GB'
EOF
as_db "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w -t 60 start >/dev/null

unset PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGHOSTADDR PGPASSWORD PGPASSFILE
export PGHOST="$tmp" PGPORT=5432 PGUSER=postgres PGDATABASE=shop
export DATABASE_URL="postgresql://postgres@/shop?host=$tmp&port=5432"
run_psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

run_psql -d postgres -c "create database shop"
REHEARSE_RELEASE=v1 sh "$v1/migrate.sh" >/dev/null

n_customers=$((3000 * scale))
n_duplicates=$((20 * scale))
n_products=$((200 * scale))
n_orders=$((8000 * scale))
n_older=$((n_orders - 500 * scale))

# Customers and products. Every formula is a function of the row number, so the data
# are the same on every run.
run_psql -v n_customers="$n_customers" -v n_duplicates="$n_duplicates" \
    -v n_products="$n_products" -v filler_kb="$filler_kb" <<'SQL'
begin;

-- 4096 blocks of 256 base64 characters derived from md5: 1 MiB of text that deflate
-- cannot shrink much, since no block repeats within its 32 KiB window.
create temp table filler as
select b, translate(encode(decode(string_agg(md5(b || '.' || j), '' order by j), 'hex'),
                           'base64'), E'\n', '') as chunk
from generate_series(0, 4095) b, generate_series(1, 12) j
where :filler_kb > 0
group by b;

insert into products (id, sku, name, price_cents, description)
select p,
       'SKU-' || lpad(p::text, 6, '0'),
       (array['Classic', 'Compact', 'Deluxe', 'Everyday', 'Heavy-duty', 'Mini', 'Organic',
              'Premium', 'Rustic', 'Smart', 'Travel', 'Vintage'])[1 + p % 12] || ' ' ||
       (array['Bamboo', 'Ceramic', 'Cotton', 'Copper', 'Glass', 'Leather', 'Linen',
              'Oak', 'Steel', 'Wool'])[1 + (p / 12) % 10] || ' ' ||
       (array['Mug', 'Backpack', 'Lamp', 'Notebook', 'Bottle', 'Blanket', 'Chair',
              'Kettle', 'Scarf', 'Planter', 'Clock', 'Tray', 'Wallet', 'Pan',
              'Speaker'])[1 + (p / 120) % 15],
       99 + 100 * ((p * 7919) % 200),
       'Item ' || p || ' of our catalogue, made to last.' ||
       coalesce(E'\n' || (select string_agg(f.chunk, '' order by j)
                          from generate_series(0, :filler_kb * 4 - 1) j
                          join filler f on f.b = (p * :filler_kb * 4 + j) % 4096), '')
from generate_series(1::bigint, :n_products) p;

-- Customers; the last n_duplicates signed up again with an email that differs from an
-- earlier customer's only by letter case ("alice.smith@..." and "Alice.Smith@...").
insert into customers (id, email, name, created_at)
select c,
       lower(first || '.' || last) || case when c >= 1600 then (c / 1600)::text else '' end ||
       '@' || (array['example.com', 'example.net', 'example.org'])[1 + c % 3],
       first || ' ' || last,
       timestamptz '2024-01-01 00:00:00+00' + (c::float8 / :n_customers) * interval '700 days'
from generate_series(1::bigint, :n_customers - :n_duplicates) c,
     lateral (select
        (array['Alice', 'Bob', 'Carla', 'David', 'Emma', 'Farid', 'Grace', 'Hugo', 'Ines',
               'Jamal', 'Keiko', 'Liam', 'Maria', 'Noah', 'Olga', 'Pedro', 'Quinn', 'Rosa',
               'Sven', 'Tara', 'Umar', 'Vera', 'Wei', 'Ximena', 'Yusuf', 'Zoe', 'Amir',
               'Bianca', 'Chen', 'Dana', 'Elif', 'Femi', 'Greta', 'Hana', 'Ivan', 'Jana',
               'Kofi', 'Lena', 'Mateo', 'Nia'])[1 + c % 40] as first,
        (array['Smith', 'Garcia', 'Muller', 'Rossi', 'Kowalski', 'Nguyen', 'Okafor', 'Silva',
               'Tanaka', 'Ivanova', 'Dubois', 'Jensen', 'Haddad', 'Novak', 'Kim', 'Murphy',
               'Schmidt', 'Lopez', 'Berg', 'Costa', 'Ahmed', 'Fischer', 'Moreau', 'Yilmaz',
               'Khan', 'Larsen', 'Petrov', 'Santos', 'Weber', 'Ito', 'Brown', 'Horvat',
               'Jansen', 'Kaur', 'Lindqvist', 'Mendes', 'Olsen', 'Park', 'Reyes',
               'Varga'])[1 + (c / 40) % 40] as last) n;

insert into customers (id, email, name, created_at)
select :n_customers - :n_duplicates + d,
       initcap(split_part(o.email, '@', 1)) || '@' || split_part(o.email, '@', 2),
       o.name,
       timestamptz '2025-12-01 00:00:00+00' + (d::float8 / :n_duplicates) * interval '60 days'
from generate_series(1::bigint, :n_duplicates) d
join customers o on o.id = d * 97;

commit;
SQL

# Orders with their items, for order numbers lo..hi; run twice around the older dump.
add_orders() {
    run_psql -v lo="$1" -v hi="$2" -v n_orders="$n_orders" \
        -v n_customers="$n_customers" -v n_products="$n_products" <<'SQL'
begin;
-- The rows are consistent by construction: skip the per-row foreign-key triggers,
-- which would otherwise dominate the time at benchmark scale.
set local session_replication_role = replica;
create temp table new_items as
select o as order_id,
       1 + (o * 31 + k * 17) % :n_products as product_id,
       1 + ((o + k) % 5 = 0)::int + ((o * k) % 11 = 0)::int as quantity
from generate_series(:lo::bigint, :hi) o,
     lateral generate_series(1, 1 + (o * 37 + o / 5) % 4) k;

insert into orders (id, customer_id, created_at, total_cents)
select i.order_id,
       1 + (i.order_id * 7919) % :n_customers,
       timestamptz '2025-06-01 00:00:00+00' + (i.order_id::float8 / :n_orders) * interval '540 days',
       sum(i.quantity * p.price_cents)
from new_items i join products p on p.id = i.product_id
group by i.order_id;

insert into order_items (order_id, product_id, quantity)
select order_id, product_id, quantity from new_items;

-- explicit ids leave the identity sequences behind; the app must be able to insert
select setval(pg_get_serial_sequence('customers', 'id'), (select max(id) from customers));
select setval(pg_get_serial_sequence('products', 'id'), (select max(id) from products));
select setval(pg_get_serial_sequence('orders', 'id'), (select max(id) from orders));
commit;
analyze;
SQL
}

mkdir -p "$out"
rm -f "$older" "$nightly" "$stamp"
dump() {
    # No owners or grants: the copy restores into whatever role the rehearsal uses.
    "$bindir/pg_dump" -Fc --no-owner --no-privileges -f "$1.tmp" shop
    mv "$1.tmp" "$1"
}

add_orders 1 "$n_older" >/dev/null
# The event log: one row a second from the first order on, cycling over the orders.
run_psql -v n_events="$events" -v n_orders="$n_orders" <<'SQL' >/dev/null
insert into order_events (order_id, kind, at)
select 1 + e % :n_orders,
       (array['viewed', 'paid', 'packed', 'shipped'])[1 + e % 4],
       timestamptz '2025-06-01 00:00:00+00' + e * interval '1 second'
from generate_series(1::bigint, :n_events) e;
select setval(pg_get_serial_sequence('order_events', 'id'), greatest(1, (select max(id) from order_events)));
analyze order_events;
SQL
dump "$older"
sleep 1    # archive times have one-second resolution
add_orders $((n_older + 1)) "$n_orders" >/dev/null
dump "$nightly"
touch "$older"
echo "$settings" >"$stamp"

echo "generate: wrote $out ($settings) in $(($(date +%s) - started))s:"
for f in "$nightly" "$older"; do
    echo "  $(basename "$f")  $(wc -c <"$f") bytes, $("$bindir/pg_restore" -l "$f" |
        sed -n 's/^; Archive created at //p')"
done

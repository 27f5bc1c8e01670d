#!/bin/sh
# The backups of a rehearsed deploy (environments/deploy.yaml) into
# demo/backups-deploy/: the demo's production with an event log of two million rows,
# large enough that a migration which locks it makes the traffic wait. Idempotent, as
# generate.sh is.
here=$(cd "$(dirname "$0")" && pwd)
SHOP_EVENTS=2000000 SHOP_BACKUP_DIR="$(dirname "$here")/backups-deploy" exec sh "$here/generate.sh"

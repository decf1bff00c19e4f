#!/bin/sh
# Run once by the postgres image at initdb (/docker-entrypoint-initdb.d): lets the fleet profile's
# postgres-replica take its base backup and stream WAL as the superuser, with the password, on the compose
# network only (the published port is loopback-bound).
set -e
echo "host replication postgres all scram-sha-256" >>"$PGDATA/pg_hba.conf"

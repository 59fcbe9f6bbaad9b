#!/usr/bin/env bash
# Run a command (the test suite) with what the tests talk to: Debian's chromium and
# curl, and a PostgreSQL server with a database of this run's own.
#
#   scripts/test-env.sh .venv/bin/pytest ...
#
# As root, missing Debian packages are installed. AGORA_TEST_DATABASE_URL is set to a
# fresh database on postgresql://postgres@127.0.0.1:5432 (dropped afterwards); where no
# server can be had the variable stays unset and the PostgreSQL tests skip with a
# reason. An AGORA_TEST_DATABASE_URL already set is used as it is.
#
# Under CI=true a dependency that cannot be provided is an error rather than a skip,
# so that a green CI run means every test really ran.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
PG_HOST=127.0.0.1
PG_PORT=5432
PG_ADMIN_URL="postgresql://postgres@$PG_HOST:$PG_PORT/postgres"
# Debian packages the tests use; each service's issue adds its own client programs.
# Chromium only recommends fonts, and pages render without text where there are none.
# swaks speaks TLS only through Net::SSLeay, which it merely recommends.
TEST_DEBS=(chromium fonts-liberation curl lftp litmus fetchmail mutt swaks libnet-ssleay-perl postgresql-client)
# What shows a package is there, where that is not a command of its name.
declare -A PROVIDES=([chromium]=/usr/bin/chromium [fonts-liberation]=/usr/share/fonts/truetype/liberation [litmus]=/usr/bin/litmus [postgresql-client]=/usr/bin/psql)

is_root() { [ "$(id -u)" = 0 ]; }
in_ci() { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; }
note() { echo "test-env: $*" >&2; }

# A missing dependency: fatal in CI, elsewhere a warning and the tests that need it skip.
# $1 says what is missing, $2 which tests skip.
missing() {
    if in_ci; then note "error: $1 (CI runs every test)"; exit 1; fi
    note "warning: $1; $2 skip"
}

apt_updated=
apt_install() {
    local log
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    note "installing Debian packages: $*"
    # Quiet when it works; the whole output when it does not.
    if { [ -n "$apt_updated" ] || apt-get -q update; } >"$log" 2>&1 \
        && apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
        apt_updated=1
        rm -f "$log"
        return 0
    fi
    cat "$log" >&2
    rm -f "$log"
    return 1
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
# For a package that brings no command (a library).
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

install_test_debs() {
    local wanted=() pkg
    for pkg in "${TEST_DEBS[@]}"; do
        have "${PROVIDES[$pkg]:-$pkg}" || deb_installed "$pkg" || wanted+=("$pkg")
    done
    [ ${#wanted[@]} -eq 0 ] && return 0
    if ! is_root || ! have apt-get; then
        missing "not installed: ${wanted[*]} (run as root on Debian to install them)" "the tests that need them"
        return 0
    fi
    apt_install "${wanted[@]}" || missing "could not install ${wanted[*]}" "the tests that need them"
}

# pg_isready may be missing where the server is elsewhere, so ask asyncpg (in the venv).
# Prints ok, refused or the error.
pg_probe() {
    "$PYTHON" - "$PG_ADMIN_URL" <<'PY'
import asyncio, sys
import asyncpg

async def main(url):
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 10)
    except (OSError, asyncio.TimeoutError):
        print("refused")
        return
    except Exception as error:
        print(f"{type(error).__name__}: {error}".replace("\n", " "))
        return
    await conn.close()
    print("ok")

asyncio.run(main(sys.argv[1]))
PY
}

pg_sql() {
    "$PYTHON" - "$PG_ADMIN_URL" "$1" <<'PY'
import asyncio, sys
import asyncpg

async def main(url, statement):
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()

asyncio.run(main(*sys.argv[1:]))
PY
}

pg_wait() {
    local i state
    for i in $(seq 1 60); do
        state=$(pg_probe) || state="cannot ask it with $PYTHON"
        [ "$state" != refused ] && { echo "$state"; return 0; }
        sleep 0.5
    done
    echo refused
}

# Start (installing it first if need be) Debian's cluster on this machine; trust the
# postgres user on loopback, as the machine's own server does.
pg_start_local() {
    if ! have pg_ctlcluster; then
        have apt-get || return 1
        apt_install postgresql || return 1
    fi
    local version conf
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    if [ -z "$version" ]; then
        note "no cluster in /etc/postgresql"
        return 1
    fi
    conf=/etc/postgresql/$version/main
    if ! grep -qE '^host\s+all\s+postgres\s+127\.0\.0\.1/32\s+trust' "$conf/pg_hba.conf"; then
        # pg_hba.conf is read top-down: the first matching line wins.
        sed -i '1i host all postgres 127.0.0.1/32 trust' "$conf/pg_hba.conf"
    fi
    note "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 \
        || pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>&1
}

run_db=
setup_postgres() {
    if [ -n "${AGORA_TEST_DATABASE_URL:-}" ]; then
        note "PostgreSQL: using AGORA_TEST_DATABASE_URL as set"
        return 0
    fi
    local state
    state=$(pg_probe) || state="cannot ask it with $PYTHON"
    if [ "$state" = refused ]; then
        if is_root; then
            pg_start_local || { missing "could not install or start PostgreSQL" "the PostgreSQL tests"; return 0; }
            state=$(pg_wait)
        else
            missing "no PostgreSQL on $PG_HOST:$PG_PORT (run as root to install one)" "the PostgreSQL tests"
            return 0
        fi
    fi
    if [ "$state" != ok ]; then
        missing "PostgreSQL on $PG_HOST:$PG_PORT: $state" "the PostgreSQL tests"
        return 0
    fi
    run_db="agora_ci_$$_$(date +%s)"
    pg_sql "CREATE DATABASE \"$run_db\""
    export AGORA_TEST_DATABASE_URL="postgresql://postgres@$PG_HOST:$PG_PORT/$run_db"
    note "PostgreSQL: AGORA_TEST_DATABASE_URL=$AGORA_TEST_DATABASE_URL"
}

cleanup() {
    if [ -n "$run_db" ]; then
        pg_sql "DROP DATABASE IF EXISTS \"$run_db\" WITH (FORCE)" || note "could not drop database $run_db"
    fi
}

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 64; }
install_test_debs
setup_postgres
trap cleanup EXIT
# Not exec: the trap must drop the database after the command.
status=0
"$@" || status=$?
exit $status

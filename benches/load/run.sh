#!/usr/bin/env bash
# ward's load harness: ward side by side with a direct path, a haproxy pair and an nginx pair,
# all doing mTLS with SPIFFE URI-SAN checks on 127.0.0.1.
#
#   benches/load/run.sh            # full run, about 15 minutes
#   benches/load/run.sh --quick    # every measurement briefly, about five minutes
#
# It installs what is missing (apt-get), builds ward (cargo build --release -p ward), makes a
# dev CA and two SVIDs with `ward certs`, starts every process on 127.0.0.1 ports from
# $WARD_BENCH_PORT_BASE (default 19100, below the ephemeral range) upwards, measures with wrk / h2load / curl, prints a
# markdown table and writes target/bench/{results.json,results.md,chart.svg}. Every process it
# starts is stopped on exit. What each measurement means: benches/load/README.md.
#
# Settings (environment): WARD_BENCH_PORT_BASE, WARD_BENCH_THREADS (haproxy's threads and
# nginx's worker processes, default 2), WARD_BENCH_WARD_WORKERS (ward's `--workers`, default:
# the same as WARD_BENCH_THREADS), WARD_BENCH_PIN=1 (pin every pair's outbound process to CPU 0 and its
# inbound to CPU 1; the load generator and the app stay free), WARD_BENCH_SECS (seconds per measurement),
# WARD_BENCH_RATES (the fixed request rates, default "2000 10000"), WARD_BENCH_RATE_CONNS (their
# keep-alive connections, default 16), WARD_BENCH_RATE_SECS (seconds per fixed-rate run),
# WARD_BENCH_IDLE_CONNS, WARD_BENCH_BULK_MIB, WARD_BENCH_NO_INSTALL=1 (never apt-get),
# WARD_BENCH_SKIP_BUILD=1 (use target/release/ward as it is), WARD_BENCH_AUDIT=file (keep
# ward's audit records in target/bench/run/logs instead of writing them to /dev/null),
# WARD_BENCH_ZTUNNEL=/path/to/ztunnel (a ztunnel binary built with `--features testing`: adds a
# ztunnel pair, in two network namespaces the harness makes, to the HBONE row; needs root;
# skipped with a note otherwise).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [[ $QUICK == 1 ]]; then
    SECS=${WARD_BENCH_SECS:-2}; IDLE_CONNS=${WARD_BENCH_IDLE_CONNS:-2000}; RATE_SECS=${WARD_BENCH_RATE_SECS:-3}
    BULK_MIB=${WARD_BENCH_BULK_MIB:-256}; BULK_REPS=1; MODE=quick
    SETTLE=${WARD_BENCH_SETTLE:-0}
else
    SECS=${WARD_BENCH_SECS:-8}; IDLE_CONNS=${WARD_BENCH_IDLE_CONNS:-10000}; RATE_SECS=${WARD_BENCH_RATE_SECS:-10}
    BULK_MIB=${WARD_BENCH_BULK_MIB:-1024}; BULK_REPS=3; MODE=full
    SETTLE=${WARD_BENCH_SETTLE:-32}
fi
THREADS=${WARD_BENCH_THREADS:-2}
# Fixed request rates (requests/s, over RATE_CONNS keep-alive connections) for the latency and
# CPU-per-request rows.
RATES=(${WARD_BENCH_RATES:-2000 10000})
RATE_CONNS=${WARD_BENCH_RATE_CONNS:-16}
# ward's worker threads: as many as haproxy's threads and nginx's workers.
WARD_WORKERS=${WARD_BENCH_WARD_WORKERS:-$THREADS}
PIN=${WARD_BENCH_PIN:-0}
BASE=${WARD_BENCH_PORT_BASE:-19100}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. tools
# ---------------------------------------------------------------------------------------------
NJS_SO=/usr/lib/nginx/modules/ngx_http_js_module.so
install_missing() {
    local -a pkgs=()
    command -v nginx   >/dev/null || pkgs+=(nginx)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v wrk     >/dev/null || pkgs+=(wrk)
    command -v h2load  >/dev/null || pkgs+=(nghttp2-client)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v curl    >/dev/null || pkgs+=(curl)
    command -v pgrep   >/dev/null || pkgs+=(procps)
    local need_njs=0
    [[ -f $NJS_SO ]] || need_njs=1
    if [[ ${#pkgs[@]} == 0 && $need_njs == 0 ]]; then return; fi
    [[ ${WARD_BENCH_NO_INSTALL:-0} == 1 ]] && die "missing: ${pkgs[*]} ${need_njs:+njs} (WARD_BENCH_NO_INSTALL=1)"
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} (and njs: $need_njs) and no apt-get to install them"
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    log "installing: ${pkgs[*]} $([[ $need_njs == 1 ]] && echo '+ the nginx njs module')"
    # Never let a package's postinst start a system-wide nginx/haproxy on port 80.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    if [[ $need_njs == 1 ]]; then
        # Debian calls it libnginx-mod-http-js; nginx.org's repository nginx-module-njs.
        local p
        for p in libnginx-mod-http-js nginx-module-njs; do
            if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then pkgs+=("$p"); break; fi
        done
    fi
    $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    [[ $made_policy == 1 ]] && $sudo rm -f "$policy"
    [[ -f $NJS_SO ]] || NJS_SO=$(find /usr/lib/nginx/modules /etc/nginx/modules -name 'ngx_http_js_module.so' 2>/dev/null | head -1)
    [[ -f $NJS_SO ]] || die "the nginx njs module (ngx_http_js_module.so) is still missing"
}
install_missing

# oha, the fixed-rate load generator: it sends on a schedule and, with --latency-correction,
# measures each request from when the schedule said to send it, so a stalled proxy's queue
# counts against it (coordinated omission corrected, as wrk2 does). From crates.io, pinned, into
# target/bench/tools the first time (a few minutes of compiling).
OHA_VERSION=1.15.0
OHA=$ROOT/target/bench/tools/bin/oha
if command -v oha >/dev/null && oha --version 2>/dev/null | grep -q " $OHA_VERSION"; then
    OHA=$(command -v oha)
elif [[ ! -x $OHA ]] || ! "$OHA" --version 2>/dev/null | grep -q " $OHA_VERSION"; then
    [[ ${WARD_BENCH_NO_INSTALL:-0} == 1 ]] && die "oha $OHA_VERSION is missing (WARD_BENCH_NO_INSTALL=1)"
    log "installing oha $OHA_VERSION from crates.io into target/bench/tools (once)"
    cargo install oha --version "$OHA_VERSION" --locked --quiet --root "$ROOT/target/bench/tools" \
        || die "cargo install oha --version $OHA_VERSION failed"
fi

WARD=$ROOT/target/release/ward
if [[ ${WARD_BENCH_SKIP_BUILD:-0} == 1 && -x $WARD ]]; then
    log "using the existing $WARD (WARD_BENCH_SKIP_BUILD=1)"
else
    log "building ward (cargo build --release -p ward)"
    (cd "$ROOT" && cargo build --release -p ward --quiet) || die "cargo build --release -p ward failed"
fi

# ---------------------------------------------------------------------------------------------
# 2. a scratch directory, limits, cleanup
# ---------------------------------------------------------------------------------------------
OUTDIR=$ROOT/target/bench
RUN=$OUTDIR/run
rm -rf "$RUN"
mkdir -p "$RUN"/{out,logs,www,tmp}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
if (( FDS < IDLE_CONNS * 2 + 1000 )); then
    NEW=$(( (FDS - 1000) / 2 ))
    log "ulimit -n is $FDS: holding $NEW idle connections instead of $IDLE_CONNS"
    IDLE_CONNS=$NEW
fi

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.2
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "${RUN:-/nonexistent}/www/big"
    if [[ ${ZT_NETNS:-0} == 1 ]]; then ip netns del wbz-a 2>/dev/null || true; ip netns del wbz-b 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 3. ports and certificates
# ---------------------------------------------------------------------------------------------
P_APP=$BASE;            P_APP_H2=$((BASE + 1))
P_W_OUT_HTTP=$((BASE + 10)); P_W_IN_HTTP=$((BASE + 11))
P_W_OUT_TCP=$((BASE + 12));  P_W_IN_TCP=$((BASE + 13))
P_W_OUT_HBONE=$((BASE + 14)); P_W_IN_HBONE=$((BASE + 15))
P_HA_H1=$((BASE + 20));  P_HA_BACK_HTTP=$((BASE + 21)); P_HA_H2=$((BASE + 22))
P_HA_TCP_FULL=$((BASE + 23)); P_HA_BACK_TCP=$((BASE + 24)); P_HA_TCP_RESUME=$((BASE + 25))
P_NG_H1=$((BASE + 30)); P_NG_H2=$((BASE + 31)); P_NG_BACK=$((BASE + 32))
P_NG_FULL=$((BASE + 33)); P_NG_RESUME=$((BASE + 34))
ALL_PORTS=($P_APP $P_APP_H2 $P_W_OUT_HTTP $P_W_IN_HTTP $P_W_OUT_TCP $P_W_IN_TCP $P_W_OUT_HBONE $P_W_IN_HBONE $P_HA_H1 $P_HA_BACK_HTTP
    $P_HA_H2 $P_HA_TCP_FULL $P_HA_BACK_TCP $P_HA_TCP_RESUME $P_NG_H1 $P_NG_H2 $P_NG_BACK $P_NG_FULL $P_NG_RESUME)
python3 - "${ALL_PORTS[@]}" <<'PY' || die "ports in use: pick another WARD_BENCH_PORT_BASE"
import socket, sys
busy = []
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        busy.append(p)
    s.close()
if busy:
    print("busy ports:", " ".join(busy), file=sys.stderr)
    sys.exit(1)
PY

TD=bench.local
CLIENT_ID=spiffe://$TD/ns/bench/sa/client
SERVER_ID=spiffe://$TD/ns/bench/sa/server
log "certificates: a dev CA for $TD, SVIDs for $CLIENT_ID and $SERVER_ID"
C=$RUN/certs
"$WARD" certs ca --trust-domain "$TD" --out "$C/ca" >/dev/null
"$WARD" certs issue --ca "$C/ca" --id "$CLIENT_ID" --ttl 4h --out "$C/client" >/dev/null
"$WARD" certs issue --ca "$C/ca" --id "$SERVER_ID" --ttl 4h --out "$C/server" >/dev/null
cat "$C/client/svid.pem" "$C/client/svid_key.pem" > "$C/client/combined.pem"
cat "$C/server/svid.pem" "$C/server/svid_key.pem" > "$C/server/combined.pem"
# nginx can verify an upstream only by DNS name (proxy_ssl_verify checks proxy_ssl_name), so the
# nginx inbound presents the same SPIFFE ID from the same CA with a DNS SAN added.
mkdir -p "$C/server-dns"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/server-dns/key.pem" 2>/dev/null
openssl req -new -key "$C/server-dns/key.pem" -subj "/O=ward bench" -out "$C/server-dns/csr.pem" 2>/dev/null
cat > "$C/server-dns/ext.cnf" <<EXT
subjectAltName=URI:$SERVER_ID,DNS:server.$TD
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
authorityKeyIdentifier=keyid
EXT
openssl x509 -req -in "$C/server-dns/csr.pem" -CA "$C/ca/ca.pem" -CAkey "$C/ca/ca_key.pem" \
    -set_serial "0x$(openssl rand -hex 15)" -days 1 -extfile "$C/server-dns/ext.cnf" \
    -out "$C/server-dns/svid.pem" 2>/dev/null
"$WARD" certs inspect "$C/server-dns/svid.pem" --bundle "$C/server/bundle.pem" >/dev/null \
    || die "the nginx server certificate is not a valid SVID"

# The DER bytes of a subjectAltName extension holding exactly one URI, the expected ID: haproxy
# matches them against the hex of the peer's certificate (ssl_c_der / ssl_s_der).
san_hex() { python3 "$HERE/report.py" san-hex "$1"; }
CLIENT_SAN_HEX=$(san_hex "$CLIENT_ID")
SERVER_SAN_HEX=$(san_hex "$SERVER_ID")
for who in client:$CLIENT_SAN_HEX server:$SERVER_SAN_HEX; do
    openssl x509 -in "$C/${who%%:*}/svid.pem" -outform der | od -An -v -tx1 | tr -d ' \n' | tr a-f A-F \
        | grep -q "${who#*:}" || die "the SAN pattern does not match the ${who%%:*} SVID"
done

# ---------------------------------------------------------------------------------------------
# 4. configs and processes
# ---------------------------------------------------------------------------------------------
render() { # template -> output, replacing @NAME@ with $NAME
    python3 - "$1" "$2" <<'PY'
import os, re, sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
def sub(m):
    v = os.environ.get(m.group(1))
    if v is None:
        sys.exit(f"{src}: @{m.group(1)}@ is not set")
    return v
open(dst, "w").write(re.sub(r"@([A-Z0-9_]+)@", sub, text))
PY
}
NOFILE=$FDS
# ward writes an audit record per connection and per HTTP request (as in production); by
# default to /dev/null so a run does not fill the disk (the records are still made and written).
if [[ ${WARD_BENCH_AUDIT:-null} == file ]]; then
    AUDIT_OUT=$RUN/logs/ward-out.audit.log; AUDIT_IN=$RUN/logs/ward-in.audit.log
else
    AUDIT_OUT=/dev/null; AUDIT_IN=/dev/null
fi
export AUDIT_OUT AUDIT_IN
export NOFILE RUN HERE THREADS NJS_SO CLIENT_ID SERVER_ID CLIENT_SAN_HEX SERVER_SAN_HEX TD
export C P_APP P_APP_H2 P_W_OUT_HTTP P_W_IN_HTTP P_W_OUT_TCP P_W_IN_TCP P_W_OUT_HBONE P_W_IN_HBONE P_HA_H1 P_HA_BACK_HTTP P_HA_H2
export P_HA_TCP_FULL P_HA_BACK_TCP P_HA_TCP_RESUME P_NG_H1 P_NG_H2 P_NG_BACK P_NG_FULL P_NG_RESUME
for t in app.nginx.conf nginx-out.conf nginx-in.conf haproxy-out.cfg haproxy-in.cfg ward-out.yaml ward-in.yaml; do
    render "$HERE/$t.in" "$RUN/$t"
done
cp "$HERE/spiffe.js" "$RUN/spiffe.js"
head -c $((BULK_MIB * 1024 * 1024)) /dev/urandom > "$RUN/www/big"
echo -n ok > "$RUN/www/index.txt"

declare -A PID
start() { # name, command...
    local name=$1; shift
    "$@" >"$RUN/logs/$name.out" 2>"$RUN/logs/$name.err" &
    PID[$name]=$!
    PIDS+=("$!")
}
wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$port (logs in $RUN/logs)"
}

log "starting the app (nginx), ward, haproxy and nginx pairs ($THREADS threads/workers each)"
NGINX_G="daemon off; master_process on;"
start app        nginx -p "$RUN" -c "$RUN/app.nginx.conf" -e "$RUN/logs/app.error.log" -g "$NGINX_G"
start ward-in    env RUST_LOG=warn "$WARD" run -c "$RUN/ward-in.yaml" --workers "$WARD_WORKERS"
start ward-out   env RUST_LOG=warn "$WARD" run -c "$RUN/ward-out.yaml" --workers "$WARD_WORKERS"
start haproxy-in  haproxy -db -f "$RUN/haproxy-in.cfg"
start haproxy-out haproxy -db -f "$RUN/haproxy-out.cfg"
start nginx-in   nginx -p "$RUN" -c "$RUN/nginx-in.conf" -e "$RUN/logs/nginx-in.error.log" -g "$NGINX_G"
start nginx-out  nginx -p "$RUN" -c "$RUN/nginx-out.conf" -e "$RUN/logs/nginx-out.error.log" -g "$NGINX_G"
for p in "${ALL_PORTS[@]}"; do wait_port "$p"; done

# Front ports per target and scenario.
declare -A H1=([direct]=$P_APP [ward]=$P_W_OUT_HTTP [haproxy]=$P_HA_H1 [nginx]=$P_NG_H1)
declare -A H2=([direct]=$P_APP_H2 [ward]=$P_W_OUT_HTTP [haproxy]=$P_HA_H2 [nginx]=$P_NG_H2)
# one new mTLS connection between the sidecars per client connection
declare -A FULL=([direct]=$P_APP [ward]=$P_W_OUT_TCP [haproxy]=$P_HA_TCP_FULL [nginx]=$P_NG_FULL)
declare -A RESUME=([ward]=$P_W_OUT_TCP [haproxy]=$P_HA_TCP_RESUME [nginx]=$P_NG_RESUME)
declare -A BULK=([direct]=$P_APP [ward]=$P_W_OUT_TCP [haproxy]=$P_HA_TCP_RESUME [nginx]=$P_NG_H1)
PROXIES=(ward haproxy nginx)

pin() { # pid cpu: every thread of the process and of its children (nginx's workers)
    local p
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        taskset -a -p -c "$2" "$p" > /dev/null || die "cannot pin process $p to CPU $2"
    done
}
if [[ $PIN == 1 ]]; then
    (( $(nproc) >= 2 )) || die "WARD_BENCH_PIN=1 needs 2 CPUs or more"
    log "pinning each pair: outbound on CPU 0, inbound on CPU 1"
    for t in "${PROXIES[@]}"; do pin "${PID[$t-out]}" 0; pin "${PID[$t-in]}" 1; done
fi
TARGETS=(direct ward haproxy nginx)

# Each inbound side must admit the client's SVID and refuse another SPIFFE ID from the same CA.
"$WARD" certs issue --ca "$C/ca" --id "spiffe://$TD/ns/bench/sa/intruder" --ttl 1h --out "$C/intruder" >/dev/null
for check in ward:$P_W_IN_HTTP ward:$P_W_IN_TCP haproxy:$P_HA_BACK_HTTP haproxy:$P_HA_BACK_TCP nginx:$P_NG_BACK; do
    for who in client intruder; do
        body=$(curl -sk --max-time 5 --tlsv1.3 --cert "$C/$who/svid.pem" --key "$C/$who/svid_key.pem" \
            "https://127.0.0.1:${check#*:}/" 2>/dev/null) || body="(refused)"
        if [[ $who == client && $body != ok ]]; then die "${check%%:*} inbound :${check#*:} refused the client's SVID: $body"; fi
        if [[ $who == intruder && $body == ok ]]; then die "${check%%:*} inbound :${check#*:} admitted another SPIFFE ID"; fi
    done
done

# Every front must answer `ok`.
for t in "${TARGETS[@]}"; do
    for port in ${H1[$t]} ${FULL[$t]} ${RESUME[$t]:-} ${BULK[$t]}; do
        body=$(curl -sS --max-time 5 "http://127.0.0.1:$port/") || die "$t: no answer on :$port (logs in $RUN/logs)"
        [[ $body == ok ]] || die "$t: :$port answered '$body' (logs in $RUN/logs)"
    done
    curl -sS --max-time 5 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:${H2[$t]}/" \
        || die "$t: no h2c answer on :${H2[$t]}"
done

proc_sum() { # pid file awk-program: the program's number from /proc/PID/file, summed over the
    # process and its children (nginx: master + workers)
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        v=$(awk "$3" "/proc/$p/$2" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
rss_kib() { proc_sum "$1" status '/^VmRSS:/ {print $2}'; }
# RssAnon: heap and stacks, memory no other process shares
anon_kib() { proc_sum "$1" status '/^RssAnon:/ {print $2}'; }
# user and system clock ticks
user_ticks() { proc_sum "$1" stat '{print $14}'; }
sys_ticks() { proc_sum "$1" stat '{print $15}'; }
# the machine's idle (idle + iowait) and total clock ticks, from /proc/stat's `cpu` line
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }
record_rss() { # phase
    local t side
    for t in "${PROXIES[@]}"; do
        for side in out in; do
            echo "$1 $t $side $(rss_kib "${PID[$t-$side]}") $(anon_kib "${PID[$t-$side]}")" >> "$RUN/out/rss.txt"
        done
    done
    if [[ ${ZT_OK:-0} == 1 ]]; then
        echo "$1 ztunnel out $(rss_kib "${PID[ztunnel-a]}") $(anon_kib "${PID[ztunnel-a]}")" >> "$RUN/out/rss.txt"
        echo "$1 ztunnel in $(rss_kib "${PID[ztunnel-b]}") $(anon_kib "${PID[ztunnel-b]}")" >> "$RUN/out/rss.txt"
    fi
}
sleep 1
record_rss idle

# On fresh processes, before the load: pools and heaps grown by the load would absorb them.
log "$IDLE_CONNS idle keep-alive connections into each front (after one request each)"
for t in "${PROXIES[@]}"; do
    python3 "$HERE/hold.py" --port "${H1[$t]}" --conns "$IDLE_CONNS" \
        --ready "$RUN/out/idle__$t.ready" > "$RUN/out/idle__$t.hold" 2>&1 &
    HOLD=$!
    PIDS+=("$HOLD")
    front_before=$(rss_kib "${PID[$t-out]}"); back_before=$(rss_kib "${PID[$t-in]}")
    fa_before=$(anon_kib "${PID[$t-out]}"); ba_before=$(anon_kib "${PID[$t-in]}")
    for _ in $(seq 1 600); do
        [[ -e $RUN/out/idle__$t.ready ]] && break
        kill -0 "$HOLD" 2>/dev/null || break
        sleep 0.1
    done
    # Measured 3 s after the last connection's request: ward parks an HTTP/1 connection
    # (gives hyper's buffers back) after one to two quiet seconds; the other proxies are
    # measured after the same wait.
    sleep 3
    front_after=$(rss_kib "${PID[$t-out]}"); back_after=$(rss_kib "${PID[$t-in]}")
    fa_after=$(anon_kib "${PID[$t-out]}"); ba_after=$(anon_kib "${PID[$t-in]}")
    # ... and 10 s later (well past the 1 s decay ward's jemalloc is built with, .cargo/config.toml): what holding the
    # connections costs. hold.py then says how many are still open; all must be.
    sleep 10
    fa_held=$(anon_kib "${PID[$t-out]}"); ba_held=$(anon_kib "${PID[$t-in]}")
    opened=$(cat "$RUN/out/idle__$t.ready" 2>/dev/null || echo 0)
    kill -TERM "$HOLD" 2>/dev/null || true
    wait "$HOLD" 2>/dev/null || true
    # how many the proxy still had open at the end (one it closed would make the 13 s figure lie)
    still=$(sed -n 's/^still open at the end: //p' "$RUN/out/idle__$t.hold")
    echo "$opened $front_before $front_after $back_before $back_after" \
        "$fa_before $fa_after $ba_before $ba_after $fa_held $ba_held ${still:-0}" > "$RUN/out/idle__$t.txt"
    printf '    %-8s %s conns: front %s -> %s KiB (anonymous %s -> %s, %s 10 s later), back %s -> %s KiB (anonymous %s -> %s, %s); %s still open\n' \
        "$t" "$opened" "$front_before" "$front_after" "$fa_before" "$fa_after" "$fa_held" \
        "$back_before" "$back_after" "$ba_before" "$ba_after" "$ba_held" "${still:-0}" >&2
    sleep 1
done
# The idle test's one request per connection leaves each pair's back with up to a few hundred
# idle connections to the app; ward closes its own when their 30 s idle timeout runs out (in
# one go). Wait that out, so it does not fall into the first measurement (it did: ward's p99 at
# one connection, measured first, went from about 170 µs to 1.5 ms).
if ((SETTLE > 0)); then
    log "letting the idle test's connections to the app time out (${SETTLE}s)"
    sleep "$SETTLE"
fi

# The ztunnel pair (WARD_BENCH_ZTUNNEL): ztunnel binds its ports on every address and finds
# where a connection was going from its original destination, so each ztunnel runs in a
# network namespace of its own (wbz-a 10.251.0.1 with the client and a REDIRECT to its 15001,
# wbz-b 10.251.0.2 with a copy of the app); dedicated mode, a local config, its built-in test CA
# (FAKE_CA needs a build with `--features testing`), HBONE between them on 15008.
ztunnel_pair() {
    local zt=$WARD_BENCH_ZTUNNEL n
    [[ -x $zt ]] || { log "    WARD_BENCH_ZTUNNEL=$zt is not executable: ztunnel pair skipped"; return 1; }
    [[ $(id -u) == 0 ]] || { log "    the ztunnel pair needs root (network namespaces): skipped"; return 1; }
    ip netns del wbz-a 2>/dev/null || true; ip netns del wbz-b 2>/dev/null || true
    ip netns add wbz-a && ip netns add wbz-b
    ZT_NETNS=1
    ip link add wbz-a0 type veth peer name wbz-b0
    ip link set wbz-a0 netns wbz-a && ip link set wbz-b0 netns wbz-b
    ip -n wbz-a addr add 10.251.0.1/24 dev wbz-a0 && ip -n wbz-b addr add 10.251.0.2/24 dev wbz-b0
    for n in wbz-a wbz-b; do ip -n $n link set lo up; ip -n $n link set ${n}0 up; done
    ip netns exec wbz-a iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x539 -j RETURN
    ip netns exec wbz-a iptables -t nat -A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN
    ip netns exec wbz-a iptables -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001
    cat > "$RUN/ztunnel.yaml" <<ZT
workloads:
- {uid: bench//client, name: client, namespace: bench, serviceAccount: client, trustDomain: cluster.local,
   workloadIps: ["10.251.0.1"], protocol: HBONE, node: a, network: "", services: {}}
- {uid: bench//server, name: server, namespace: bench, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ["10.251.0.2"], protocol: HBONE, node: b, network: "", services: {}}
policies: []
services: []
ZT
    sed -e 's/127\.0\.0\.1:@P_APP@/10.251.0.2:8080/' -e '/@P_APP_H2@/d' -e 's/app\.nginx\.pid/app-zt.nginx.pid/' \
        "$HERE/app.nginx.conf.in" > "$RUN/app-zt.nginx.conf.in"
    render "$RUN/app-zt.nginx.conf.in" "$RUN/app-zt.nginx.conf"
    start app-zt ip netns exec wbz-b nginx -p "$RUN" -c "$RUN/app-zt.nginx.conf" -e "$RUN/logs/app-zt.error.log" -g "$NGINX_G"
    for n in a:client b:server; do
        mkdir -p "$RUN/zt-${n%%:*}"
        start "ztunnel-${n%%:*}" ip netns exec "wbz-${n%%:*}" env -C "$RUN/zt-${n%%:*}" XDS_ADDRESS="" FAKE_CA=true \
            LOCAL_XDS_PATH="$RUN/ztunnel.yaml" PROXY_MODE=dedicated PROXY_WORKLOAD_INFO="bench/${n#*:}/${n#*:}" \
            ENABLE_ORIG_SRC=false PACKET_MARK=1337 ZTUNNEL_WORKER_THREADS="$THREADS" RUST_LOG=warn "$zt"
    done
    for _ in $(seq 1 100); do
        if ip netns exec wbz-a curl -s -o /dev/null --max-time 1 http://127.0.0.1:15021/healthz/ready \
            && ip netns exec wbz-b curl -s -o /dev/null --max-time 1 http://127.0.0.1:15021/healthz/ready \
            && [[ $(ip netns exec wbz-a curl -s --max-time 2 http://10.251.0.2:8080/) == ok ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "    the ztunnel pair did not answer (logs in $RUN/logs): skipped"
    return 1
}

# ---------------------------------------------------------------------------------------------
# 5. measurements
# ---------------------------------------------------------------------------------------------
WRK_LUA=$HERE/wrk-report.lua
run_wrk() { # scenario target port conns threads [extra wrk args]; $WRK_NS/$WRK_HOST: run wrk
    # inside that network namespace, against that address (the ztunnel pair)
    local scenario=$1 target=$2 port=$3 conns=$4 threads=$5; shift 5
    local -a ns=()
    [[ -n ${WRK_NS:-} ]] && ns=(ip netns exec "$WRK_NS")
    "${ns[@]}" wrk -t "$threads" -c "$conns" -d "${WRK_SECS:-$SECS}s" --timeout 5s -s "$WRK_LUA" "$@" \
        "http://${WRK_HOST:-127.0.0.1}:$port/" > "$RUN/out/${scenario}__${target}.txt" 2>&1 || true
    printf '    %-16s %-8s %s\n' "$scenario" "$target" \
        "$(grep -o 'Requests/sec: *[0-9.]*' "$RUN/out/${scenario}__${target}.txt" || echo failed)" >&2
}

run_wrk_cpu() { # scenario target port conns threads: run_wrk, and the CPU the pair spent on it
    local scenario=$1 t=$2 po pi uo so ui si idle0 all0 idle1 all1
    if [[ $t == direct ]]; then run_wrk "$@"; return; fi
    po=${PID[$t-out]} pi=${PID[$t-in]}
    uo=$(user_ticks "$po") so=$(sys_ticks "$po") ui=$(user_ticks "$pi") si=$(sys_ticks "$pi")
    read -r idle0 all0 < <(machine_ticks)
    run_wrk "$@"
    read -r idle1 all1 < <(machine_ticks)
    # out_user out_sys in_user in_sys ticks_per_second machine_idle machine_total
    echo "$(($(user_ticks "$po") - uo)) $(($(sys_ticks "$po") - so))" \
        "$(($(user_ticks "$pi") - ui)) $(($(sys_ticks "$pi") - si))" \
        "$(getconf CLK_TCK) $((idle1 - idle0)) $((all1 - all0))" > "$RUN/out/cpu-${scenario}__$t.txt"
}

if [[ -n ${WARD_BENCH_ZTUNNEL:-} ]]; then
    log "the ztunnel pair (WARD_BENCH_ZTUNNEL=$WARD_BENCH_ZTUNNEL)"
    ztunnel_pair && ZT_OK=1
    [[ ${ZT_OK:-0} == 1 && $PIN == 1 ]] && { pin "${PID[ztunnel-a]}" 0; pin "${PID[ztunnel-b]}" 1; }
fi

# Fixed-rate runs: what a sidecar at a pod's modest load costs. oha sends RATE requests/s over
# RATE_CONNS keep-alive connections on a schedule, latency counted from the scheduled send; the
# CPU of both processes of the pair over the window, divided by the requests served.
# Chains: http (L7: ward's per-request policy on) and l4 (tcp listeners: one mTLS connection per
# client connection, bytes relayed).
declare -A RATE_PORT=([direct]=$P_APP [ward-http]=$P_W_OUT_HTTP [haproxy-http]=$P_HA_H1 [nginx-http]=$P_NG_H1
    [ward-l4]=$P_W_OUT_TCP [haproxy-l4]=$P_HA_TCP_RESUME)
RATE_CHAINS=(direct ward-http haproxy-http nginx-http ward-l4 haproxy-l4)
[[ ${ZT_OK:-0} == 1 ]] && RATE_CHAINS+=(ztunnel-l4)
run_rate() { # rate chain: oha at that rate, and the CPU the chain's processes spent
    local rate=$1 chain=$2 out="$RUN/out/rate${1}__${2}" proxy=${2%-*} p i url
    local -a ns=() pids=() t0=() t1=()
    case $chain in
        direct) ;;
        ztunnel-l4) pids=("${PID[ztunnel-a]}" "${PID[ztunnel-b]}") ;;
        *) pids=("${PID[$proxy-out]}" "${PID[$proxy-in]}") ;;
    esac
    url="http://127.0.0.1:${RATE_PORT[$chain]:-0}/"
    if [[ $chain == ztunnel-l4 ]]; then ns=(ip netns exec wbz-a); url="http://10.251.0.2:8080/"; fi
    for p in "${pids[@]}"; do t0+=($(( $(user_ticks "$p") + $(sys_ticks "$p") ))); done
    "${ns[@]}" "$OHA" -z "${RATE_SECS}s" -c "$RATE_CONNS" -q "$rate" --latency-correction --no-tui \
        --output-format json "$url" > "$out.json" 2> "$out.err" || true
    for p in "${pids[@]}"; do t1+=($(( $(user_ticks "$p") + $(sys_ticks "$p") ))); done
    local ticks=0
    for i in "${!t1[@]}"; do ticks=$((ticks + t1[i] - t0[i])); done
    echo "$ticks $(getconf CLK_TCK)" > "$out.cpu"
    printf '    %-6s req/s %-13s %s\n' "$rate" "$chain" "$(python3 "$HERE/report.py" oha-summary "$out.json")" >&2
}
for rate in "${RATES[@]}"; do
    log "fixed rate: $rate requests/s over $RATE_CONNS keep-alive connections, ${RATE_SECS}s per chain (oha, latency corrected)"
    for chain in "${RATE_CHAINS[@]}"; do run_rate "$rate" "$chain"; done
done

log "HTTP/1.1 keep-alive, 1 connection (${SECS}s each; and the CPU each pair spends per request)"
for t in "${TARGETS[@]}"; do run_wrk_cpu ka1 "$t" "${H1[$t]}" 1 1; done
# One 1-connection run per target moves by 10-20 µs with whatever the machine did just before;
# the latency target is judged on rounds that take turns (direct, then each pair), each
# pair's added latency taken against the direct run of its own round, and the median kept.
LAT_ROUNDS=${WARD_BENCH_LAT_ROUNDS:-5}
LAT_SECS=$(( SECS / 4 > 1 ? SECS / 4 : 1 ))
log "latency at 1 connection: $LAT_ROUNDS rounds taking turns, ${LAT_SECS}s each"
for r in $(seq 1 "$LAT_ROUNDS"); do
    for t in "${TARGETS[@]}"; do WRK_SECS=$LAT_SECS run_wrk "lat1-r$r" "$t" "${H1[$t]}" 1 1; done
done
log "HTTP/1.1 keep-alive, 32 connections (and the CPU each pair spends per request)"
for t in "${TARGETS[@]}"; do run_wrk_cpu ka32 "$t" "${H1[$t]}" 32 2; done
# Memory a saturating run leaves behind: what is kept, not the high-water mark: 2 s after,
# and 12 s after (well past the 1 s decay ward's jemalloc is built with, .cargo/config.toml).
sleep 2
record_rss after_saturation
sleep 10
record_rss after_saturation_12s
log "HTTP/1.1 keep-alive, 32 connections through the tcp-mode pairs (no HTTP work in the proxies)"
for t in ward haproxy; do run_wrk_cpu ka32tcp "$t" "${FULL[$t]}" 32 2; done
[[ ${ZT_OK:-0} == 1 ]] && WRK_NS=wbz-a WRK_HOST=10.251.0.2 run_wrk ka32tcp ztunnel 8080 32 2
log "a new connection per request, full handshake between the sidecars"
for t in "${TARGETS[@]}"; do run_wrk newconn_full "$t" "${FULL[$t]}" 16 2 -H 'Connection: close'; done
log "a new connection per request, each a CONNECT stream over a pooled HBONE connection"
run_wrk newconn_hbone ward "$P_W_OUT_HBONE" 16 2 -H 'Connection: close'
if [[ ${ZT_OK:-0} == 1 ]]; then
    WRK_NS=wbz-a WRK_HOST=10.251.0.2 run_wrk newconn_hbone ztunnel 8080 16 2 -H 'Connection: close'
elif [[ -n ${WARD_BENCH_ZTUNNEL:-} ]]; then
    echo "skipped: the ztunnel pair did not start (logs in target/bench/run/logs)" > "$RUN/out/newconn_hbone__ztunnel.skipped"
else
    echo "skipped: WARD_BENCH_ZTUNNEL names no ztunnel binary (the ztunnel pair is left out)" > "$RUN/out/newconn_hbone__ztunnel.skipped"
    log "    ztunnel pair skipped: set WARD_BENCH_ZTUNNEL=/path/to/ztunnel (built with --features testing) to add it"
fi
log "a new connection per request, TLS session resumption between the sidecars"
for t in "${PROXIES[@]}"; do run_wrk newconn_resumed "$t" "${RESUME[$t]}" 16 2 -H 'Connection: close'; done
log "a new connection per request into the HTTP front (sidecar-to-sidecar connections pooled)"
for t in "${TARGETS[@]}"; do run_wrk newconn_pooled "$t" "${H1[$t]}" 16 2 -H 'Connection: close'; done

log "HTTP/2 multiplexed (h2c prior knowledge, 4 connections x 32 streams)"
for t in "${TARGETS[@]}"; do
    h2load -c 4 -m 32 -t 1 -D "$SECS" --warm-up-time=1 "http://127.0.0.1:${H2[$t]}/" \
        > "$RUN/out/h2__$t.txt" 2>&1 || true
    printf '    %-16s %-8s %s\n' h2 "$t" "$(grep -o '[0-9.]* req/s' "$RUN/out/h2__$t.txt" || echo failed)" >&2
done

log "bulk: a ${BULK_MIB} MiB download through each path (curl, $BULK_REPS run(s))"
for t in "${TARGETS[@]}"; do
    for _ in $(seq 1 "$BULK_REPS"); do
        curl -sS --max-time 300 -o /dev/null -w '%{speed_download} %{size_download}\n' \
            "http://127.0.0.1:${BULK[$t]}/big" >> "$RUN/out/bulk__$t.txt" 2>&1 || echo "failed" >> "$RUN/out/bulk__$t.txt"
    done
    printf '    %-16s %-8s %s B/s\n' bulk "$t" "$(tail -1 "$RUN/out/bulk__$t.txt")" >&2
done

sleep 1
record_rss after_load

# ---------------------------------------------------------------------------------------------
# 6. the report
# ---------------------------------------------------------------------------------------------
{
    echo "mode=$MODE"
    echo "secs=$SECS"
    echo "threads=$THREADS"
    echo "ward_workers=$WARD_WORKERS"
    echo "pinned=$PIN"
    echo "idle_conns=$IDLE_CONNS"
    echo "bulk_mib=$BULK_MIB"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -sr)"
    echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "mem_total_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "ward=$("$WARD" --version 2>/dev/null | head -1)"
    echo "ward_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*version: //')"
    echo "haproxy=$(haproxy -v 2>/dev/null | head -1 | awk '{print $3}')"
    echo "openssl=$(openssl version | awk '{print $2}')"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "h2load=$(h2load --version 2>&1 | head -1 | awk '{print $NF}')"
    echo "ztunnel=${WARD_BENCH_ZTUNNEL:-none}"
    echo "oha=$("$OHA" --version 2>/dev/null | awk '{print $2}')"
    echo "rates=${RATES[*]}"
    echo "rate_conns=$RATE_CONNS"
    echo "rate_secs=$RATE_SECS"
} > "$RUN/out/meta.txt"
python3 "$HERE/report.py" report --raw "$RUN/out" --out "$OUTDIR"

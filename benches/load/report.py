#!/usr/bin/env python3
"""The load harness's report (stdlib only).

    report.py san-hex SPIFFE_ID         the DER of a subjectAltName extension holding exactly
                                        that one URI, as uppercase hex (haproxy's ACL pattern)
    report.py oha-summary FILE          one line from an oha JSON result (the harness's log)
    report.py report --raw DIR --out DIR
                                        parses the raw outputs run.sh saved (oha, wrk, h2load,
                                        curl, CPU and RSS samples), prints markdown tables and
                                        writes results.json, results.md, chart.svg and
                                        fixed_rate.svg
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

TARGETS = ["direct", "ward", "haproxy", "nginx"]
PROXIES = ["ward", "haproxy", "nginx"]
# The fixed-rate chains: L7 (HTTP listeners; ward decides per request) and L4 (tcp listeners).
RATE_CHAINS = {"http": ["ward-http", "haproxy-http", "nginx-http"], "l4": ["ward-l4", "haproxy-l4", "ztunnel-l4"]}
PERCENTILES = [("p50", "p50"), ("p99", "p99"), ("p99.9", "p99.9")]


# --------------------------------------------------------------------------------------------
# san-hex
# --------------------------------------------------------------------------------------------
def der_len(n):
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return bytes([0x82, n >> 8, n & 0xFF])


def san_hex(spiffe_id):
    uri = spiffe_id.encode()
    general_name = b"\x86" + der_len(len(uri)) + uri
    names = b"\x30" + der_len(len(general_name)) + general_name
    octets = b"\x04" + der_len(len(names)) + names
    return (b"\x06\x03\x55\x1d\x11" + octets).hex().upper()


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def parse_wrk(text):
    if not text:
        return None
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if not m:
        return {"error": text.strip().splitlines()[-1] if text.strip() else "no output"}
    r = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    r["errors_total"] = sum(r["errors"].values())
    return r


def to_us(value, unit):
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def parse_h2load(text):
    if not text:
        return None
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if m:
        r["requests"] = int(m.group(1))
        r["succeeded"] = int(m.group(4))
        r["failed"] = int(m.group(5)) + int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["non_2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    if m:
        r["mean_us"] = to_us(m.group(5), m.group(6))
    if "rps" not in r:
        r["error"] = text.strip().splitlines()[-1] if text.strip() else "no output"
    return r


def parse_bulk(text, expect_bytes):
    if not text:
        return None
    speeds = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and int(float(parts[1])) == expect_bytes:
            speeds.append(float(parts[0]) / (1024 * 1024))
    if not speeds:
        return {"error": text.strip()}
    return {"mib_per_s": statistics.median(speeds), "runs": speeds}


def parse_oha(text):
    """An oha JSON result: served rate, latency percentiles and max in µs, failures."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return {"error": text.strip().splitlines()[-1] if text.strip() else "no output"}
    summary, pct = doc.get("summary", {}), doc.get("latencyPercentiles", {})
    codes = doc.get("statusCodeDistribution", {}) or {}
    ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
    r = {
        "rps": summary.get("requestsPerSec"),
        "requests": ok,
        "non_2xx": sum(n for c, n in codes.items() if not str(c).startswith("2")),
        # oha stops at the deadline; the requests then in flight are not failures
        "errors_total": sum(n for e, n in (doc.get("errorDistribution") or {}).items()
                            if e != "aborted due to deadline"),
        "max_us": (summary.get("slowest") or 0) * 1e6,
    }
    for key, name in PERCENTILES:
        v = pct.get(name)
        r[f"{key}_us"] = None if v is None else v * 1e6
    if not ok:
        r["error"] = "no successful request"
    return r


def collect(raw):
    meta = {}
    for line in (read(os.path.join(raw, "meta.txt")) or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    res = {}
    for path in sorted(glob.glob(os.path.join(raw, "*__*.txt"))):
        scenario, target = os.path.basename(path)[:-4].split("__", 1)
        text = read(path)
        if scenario == "h2":
            r = parse_h2load(text)
        elif scenario == "bulk":
            r = parse_bulk(text, int(meta.get("bulk_mib", "0")) * 1024 * 1024)
        elif scenario.startswith("cpu-"):
            # CPU ticks (user, system) of each side of a pair over the run `cpu-<scenario>`
            parts = (text or "").split()
            r = {"error": text or "no output"}
            if len(parts) == 7:
                r = dict(zip(("out_user", "out_sys", "in_user", "in_sys", "clk_tck", "machine_idle",
                              "machine_total"), map(int, parts)))
        elif scenario == "idle":
            parts = (text or "").split()
            if len(parts) == 12:
                n, fb, fa, bb, ba, afb, afa, abb, aba, afh, abh, still = (int(p) for p in parts)
                r = {"conns": n, "front_kib_before": fb, "front_kib_after": fa,
                     "back_kib_before": bb, "back_kib_after": ba,
                     "front_anon_kib_before": afb, "front_anon_kib_after": afa,
                     "back_anon_kib_before": abb, "back_anon_kib_after": aba}
                if n:
                    r["front_bytes_per_conn"] = (fa - fb) * 1024 / n
                    r["pair_bytes_per_conn"] = ((fa - fb) + (ba - bb)) * 1024 / n
                    r["pair_anon_bytes_per_conn"] = ((afa - afb) + (aba - abb)) * 1024 / n
                    r["front_anon_bytes_per_conn"] = (afa - afb) * 1024 / n
                    r["still_open"] = still
                    if still == n:
                        r["front_anon_held_bytes_per_conn"] = (afh - afb) * 1024 / n
                        r["pair_anon_held_bytes_per_conn"] = ((afh - afb) + (abh - abb)) * 1024 / n
                    else:
                        r["held_error"] = f"the proxy closed {n - still} of the {n} idle connections before the end"
            else:
                r = {"error": text}
        else:
            r = parse_wrk(text)
        res.setdefault(scenario, {})[target] = r
    for path in sorted(glob.glob(os.path.join(raw, "rate*__*.json"))):
        scenario, chain = os.path.basename(path)[:-5].split("__", 1)
        r = parse_oha(read(path))
        cpu = (read(path[:-5] + ".cpu") or "").split()
        if r is not None and "error" not in r and len(cpu) == 2:
            r["cpu_ticks"], r["clk_tck"] = int(cpu[0]), int(cpu[1])
            if chain != "direct" and r["requests"]:
                r["cpu_us_per_request"] = r["cpu_ticks"] * 1e6 / r["clk_tck"] / r["requests"]
        res.setdefault(scenario, {})[chain] = r
    rss = {}
    for line in (read(os.path.join(raw, "rss.txt")) or "").splitlines():
        phase, target, side, kib, *anon = line.split()
        rss.setdefault(target, {}).setdefault(phase, {})[side] = int(kib)
        if anon:
            rss[target].setdefault(phase + "_anon", {})[side] = int(anon[0])
    return meta, res, rss


# --------------------------------------------------------------------------------------------
# the table, ratios and targets
# --------------------------------------------------------------------------------------------
def get(res, scenario, target, key):
    r = res.get(scenario, {}).get(target)
    if not r or "error" in r:
        return None
    return r.get(key)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_ratio(v):
    return "n/a" if v is None else f"{v:.2f}×"


def build(meta, res, rss):
    rows = []  # (label, {target: text}, ratio ward/haproxy or None, chart key, higher_is_better)
    chart = []  # (label, {proxy: ratio vs haproxy, oriented so that higher is better})

    def row(label, values, digits=0, better="higher", chart_label=None, note=""):
        cells = {t: fmt(values.get(t), digits) for t in TARGETS}
        w, h = values.get("ward"), values.get("haproxy")
        r = ratio(w, h)
        rows.append({"metric": label, "values": values, "cells": cells,
                     "ward_vs_haproxy": r, "better": better, "note": note})
        if chart_label:
            oriented = {}
            for p in ("ward", "nginx"):
                x = ratio(values.get(p), h)
                if x is not None and better == "lower":
                    x = 1 / x if x else None
                oriented[p] = x
            chart.append((chart_label, oriented))

    def lat_added(scn, key):
        d = get(res, scn, "direct", key)
        return {t: (get(res, scn, t, key) - d if get(res, scn, t, key) is not None and d is not None else None)
                for t in PROXIES}

    def cpu_per_request(scn, t, kinds=("user", "sys")):
        c, n = res.get("cpu-" + scn, {}).get(t), get(res, scn, t, "requests")
        if not c or "error" in c or not n:
            return None
        ticks = sum(c[f"{side}_{k}"] for side in ("out", "in") for k in kinds)
        return ticks * 1e6 / c["clk_tck"] / n

    cpu_note = ("time of the outbound and inbound processes during the run, divided by the requests "
                "served (clock ticks, so ±1 tick per process)")
    vals = {t: get(res, "ka1", t, "rps") for t in TARGETS}
    row("HTTP/1.1 keep-alive, 1 conn: req/s", vals, chart_label="keep-alive 1 conn req/s")
    row("… 1 conn: p50 latency (µs)", {t: get(res, "ka1", t, "p50_us") for t in TARGETS}, better="lower")
    row("… 1 conn: p99 latency (µs)", {t: get(res, "ka1", t, "p99_us") for t in TARGETS}, better="lower")
    rounds = sorted(int(k[len("lat1-r"):]) for k in res if k.startswith("lat1-r") and k[len("lat1-r"):].isdigit())

    def lat_rounds():
        """Each pair's p50 added over the direct run of the same round, median over rounds."""
        out = {}
        for t in PROXIES:
            added = [get(res, f"lat1-r{r}", t, "p50_us") - get(res, f"lat1-r{r}", "direct", "p50_us")
                     for r in rounds
                     if get(res, f"lat1-r{r}", t, "p50_us") is not None
                     and get(res, f"lat1-r{r}", "direct", "p50_us") is not None]
            out[t] = statistics.median(added) if added else None
        return out

    lat_median = lat_rounds()
    row("… 1 conn: p50 added over direct (µs)", lat_added("ka1", "p50_us"), better="lower")
    row(f"… 1 conn: p50 added over direct, median of {len(rounds)} rounds taking turns (µs)", lat_median,
        better="lower", chart_label="latency added (1 conn p50)",
        note="direct and each pair take turns, one short run each per round; each pair's p50 minus the "
             "direct p50 of the same round, median over the rounds (the latency target is judged on this)")
    row("… 1 conn: CPU per request in user space, both proxies (µs)",
        {t: cpu_per_request("ka1", t, ("user",)) for t in PROXIES}, 1, better="lower", note="user " + cpu_note)
    row("… 1 conn: CPU per request in the kernel, both proxies (µs)",
        {t: cpu_per_request("ka1", t, ("sys",)) for t in PROXIES}, 1, better="lower",
        note="system " + cpu_note + "; on loopback this includes delivering each write to the reader")
    row("HTTP/1.1 keep-alive, 32 conns: req/s", {t: get(res, "ka32", t, "rps") for t in TARGETS},
        chart_label="keep-alive 32 conns req/s")
    row("… 32 conns: p50 latency (µs)", {t: get(res, "ka32", t, "p50_us") for t in TARGETS}, better="lower")
    row("… 32 conns: p99 latency (µs)", {t: get(res, "ka32", t, "p99_us") for t in TARGETS}, better="lower")
    row("… 32 conns: CPU per request, both proxies (µs)", {t: cpu_per_request("ka32", t) for t in PROXIES}, 1,
        better="lower", chart_label="CPU per request (32 conns)", note="user + system " + cpu_note)
    def idle_pct(scn, t):
        c = res.get("cpu-" + scn, {}).get(t)
        if not c or "error" in c or not c["machine_total"]:
            return None
        return 100 * c["machine_idle"] / c["machine_total"]

    row("… 32 conns: CPUs idle during the run (%)", {t: idle_pct("ka32", t) for t in PROXIES}, better="lower",
        note="idle time of the whole machine (/proc/stat) while wrk ran: what the load generator, the app "
             "and the pair left unused")
    row("HTTP/1.1 keep-alive, 32 conns, tcp-mode pairs: req/s",
        {"direct": get(res, "ka32", "direct", "rps"), **{t: get(res, "ka32tcp", t, "rps") for t in ("ward", "haproxy")}},
        note="the same load through the pairs' tcp listeners: mTLS and the identity check per connection, "
             "bytes relayed with no HTTP work (nginx has no tcp pair here)")
    row("… tcp mode: CPU per request, both proxies (µs)", {t: cpu_per_request("ka32tcp", t) for t in ("ward", "haproxy")},
        1, better="lower", note="user + system " + cpu_note)
    row("new conn per request, full handshake: conn/s", {t: get(res, "newconn_full", t, "rps") for t in TARGETS},
        chart_label="new conns/s vs full handshake",
        note="ward: tcp pair, one mTLS connection per client connection (resumption is ward's own choice); "
             "haproxy: no-ssl-reuse; nginx: proxy_ssl_session_reuse off")
    zt_hbone = v_zt = get(res, "newconn_hbone", "ztunnel", "rps")
    zt_note = (f"ztunnel pair (two network namespaces, HBONE): {fmt(v_zt)} conn/s" if v_zt is not None
               else "ztunnel pair: not in this run (WARD_BENCH_ZTUNNEL names no ztunnel binary)")
    row("new conn per request over HBONE: conn/s",
        {"ward": get(res, "newconn_hbone", "ward", "rps"), "haproxy": get(res, "newconn_full", "haproxy", "rps")},
        chart_label="new conns/s, HBONE vs full handshake",
        note="ward: each client connection a CONNECT stream over pooled HBONE connections between the pair; "
             "haproxy: its full-handshake tcp pair (it has no tunnel); " + zt_note)
    row("new conn per request, session resumption: conn/s", {t: get(res, "newconn_resumed", t, "rps") for t in TARGETS},
        chart_label="new conns/s, resumption",
        note="ward: same tcp pair; haproxy and nginx: TLS session reuse on (their default)")
    row("new conn per request, pooled sidecar links: conn/s", {t: get(res, "newconn_pooled", t, "rps") for t in TARGETS},
        chart_label="new conns/s, pooled",
        note="client connections into the HTTP front; ward: pooled HTTP/2 between the sidecars; "
             "haproxy: http-reuse always; nginx: upstream keepalive")
    row("HTTP/2 multiplexed (4 conns × 32 streams): req/s", {t: get(res, "h2", t, "rps") for t in TARGETS},
        chart_label="HTTP/2 req/s")
    row("bulk download: MiB/s", {t: get(res, "bulk", t, "mib_per_s") for t in TARGETS}, chart_label="bulk MiB/s",
        note="ward and haproxy: tcp pairs; nginx: its http pair")
    idle_n = meta.get("idle_conns", "?")
    row(f"{idle_n} idle conns: front RSS per conn (bytes)",
        {t: get(res, "idle", t, "front_bytes_per_conn") for t in PROXIES}, better="lower",
        chart_label="idle conn memory (front)")
    row(f"{idle_n} idle conns: pair RSS per conn (bytes)",
        {t: get(res, "idle", t, "pair_bytes_per_conn") for t in PROXIES}, better="lower")

    def rss_mib(phase, side):
        return {t: (rss[t][phase][side] / 1024 if rss.get(t, {}).get(phase, {}).get(side) is not None else None)
                for t in PROXIES}

    row(f"{idle_n} idle conns: front anonymous memory per conn, 3 s in (bytes)",
        {t: get(res, "idle", t, "front_anon_bytes_per_conn") for t in PROXIES}, better="lower",
        note="RssAnon growth of the process holding the idle client connections, divided by the connections, "
             "3 s after the last one's request: includes what the connections' first requests used and freed")
    row(f"{idle_n} idle conns: front anonymous memory per conn, 13 s in (bytes)",
        {t: get(res, "idle", t, "front_anon_held_bytes_per_conn") for t in PROXIES}, better="lower",
        chart_label="idle conn memory (front, 13 s)",
        note="the same 10 s later (well past ward's 1 s jemalloc decay), every connection still open (hold.py "
             "checks): what holding the connections costs (the per-connection target is judged on this)")
    row(f"{idle_n} idle conns: pair anonymous memory per conn, 13 s in (bytes)",
        {t: get(res, "idle", t, "pair_anon_held_bytes_per_conn") for t in PROXIES}, better="lower",
        note="both processes: the back also holds the connections to the app that the idle connections' "
             "concurrent first requests opened (ward closes them after 30 s idle)")

    anon_note = ("RssAnon: heap and stacks, private to the process; the rest of RSS is the binary's and "
                 "libraries' pages, which every pod on a node mapping the same files shares")
    for side, name in (("out", "outbound"), ("in", "inbound")):
        row(f"anonymous memory idle, {name} process (MiB)", rss_mib("idle_anon", side), 1, better="lower",
            note=anon_note if side == "out" else "")
    for side, name in (("out", "outbound"), ("in", "inbound")):
        row(f"anonymous memory 2 s after the saturating run (32 conns), {name} (MiB)",
            rss_mib("after_saturation_anon", side), 1, better="lower",
            note="what the process keeps once the load has stopped, not its high-water mark" if side == "out" else "")
    for side, name in (("out", "outbound"), ("in", "inbound")):
        row(f"anonymous memory 12 s after the saturating run, {name} (MiB)",
            rss_mib("after_saturation_12s_anon", side), 1, better="lower",
            note="well past the 1 s decay ward's jemalloc is built with, .cargo/config.toml (the memory target is judged on this)"
            if side == "out" else "")
    for side, name in (("out", "outbound"), ("in", "inbound")):
        row(f"anonymous memory after every measurement, {name} (MiB)", rss_mib("after_load_anon", side), 1,
            better="lower")
    row("RSS idle, outbound process (MiB)", rss_mib("idle", "out"), 1, better="lower")
    row("RSS idle, inbound process (MiB)", rss_mib("idle", "in"), 1, better="lower")
    row("RSS after load, outbound process (MiB)", rss_mib("after_load", "out"), 1, better="lower")
    row("RSS after load, inbound process (MiB)", rss_mib("after_load", "in"), 1, better="lower")

    # the fixed-rate table: per rate and chain, latency added over direct at the same rate,
    # and CPU per request of the chain's two processes
    rates = sorted({int(k[len("rate"):]) for k in res if k.startswith("rate") and k[len("rate"):].isdigit()})
    rate_table = []
    for rate in rates:
        scn = f"rate{rate}"
        d = res.get(scn, {}).get("direct")
        for layer, chains in RATE_CHAINS.items():
            for chain in chains:
                r = res.get(scn, {}).get(chain)
                if r is None:
                    continue
                entry = {"rate": rate, "layer": layer, "chain": chain, "ok": "error" not in r}
                if entry["ok"]:
                    entry["served_rps"] = r.get("rps")
                    for key in ("p50", "p99", "p99.9", "max"):
                        mine, base = r.get(f"{key}_us"), (d or {}).get(f"{key}_us")
                        entry[f"{key}_us"] = mine
                        entry[f"{key}_added_us"] = (mine - base if mine is not None and base is not None
                                                    and "error" not in (d or {"error": 1}) else None)
                    us = r.get("cpu_us_per_request")
                    entry["cpu_us_per_request"] = us
                    # vCPU at 1,000 requests/s: 1,000 × µs per request, in seconds per second
                    entry["vcpu_per_1k_rps"] = None if us is None else us / 1000
                else:
                    entry["error"] = r["error"]
                rate_table.append(entry)

    def rate_entry(rate, chain):
        return next((e for e in rate_table if e["rate"] == rate and e["chain"] == chain and e["ok"]), None)

    def vs_best_peer(rate, layer, key):
        """ward's value over the best (lowest) peer pair's, and which peer that was."""
        mine = rate_entry(rate, f"ward-{layer}")
        peers = [(e[key], e["chain"]) for c in RATE_CHAINS[layer] if not c.startswith("ward")
                 for e in [rate_entry(rate, c)] if e and e.get(key) is not None]
        if not mine or mine.get(key) is None or not peers:
            return None, None
        best, who = min(peers)
        if best <= 0:
            return None, who
        return mine[key] / best, who

    targets = []
    for rate in rates:
        for layer in RATE_CHAINS:
            value, who = vs_best_peer(rate, layer, "cpu_us_per_request")
            targets.append({"target": f"CPU per request at {rate:,} req/s, {layer.upper()}: ≤ 0.5× the best peer "
                                      f"pair's ({who or 'n/a'})", "value": value, "goal": 0.5, "cmp": "<="})
    for rate in rates:
        for layer in RATE_CHAINS:
            for key, goal in (("p99_added_us", 0.8), ("p50_added_us", 1.0)):
                value, who = vs_best_peer(rate, layer, key)
                targets.append({"target": f"added {key.split('_')[0]} at {rate:,} req/s, {layer.upper()}: ≤ {goal}× "
                                          f"the best peer pair's ({who or 'n/a'})",
                                "value": value, "goal": goal, "cmp": "<="})

    def v(scn, t, key):
        return get(res, scn, t, key)

    def best_of(scn, peers):
        vals = [x for x in (v(scn, p, "rps") for p in peers) if x is not None]
        return max(vals) if vals else None

    zt_ka = v("ka32tcp", "ztunnel", "rps")
    targets.append({"target": "keep-alive saturation req/s (32 conns, HTTP) ≥ 1.5× the best peer pair (haproxy, nginx)",
                    "value": ratio(v("ka32", "ward", "rps"), best_of("ka32", ["haproxy", "nginx"])),
                    "goal": 1.5, "cmp": ">="})
    targets.append({"target": "keep-alive saturation req/s (32 conns, tcp pairs) ≥ 1.5× the best peer pair (haproxy"
                              + (", ztunnel)" if zt_ka is not None else "; no ztunnel in this run)"),
                    "value": ratio(v("ka32tcp", "ward", "rps"), best_of("ka32tcp", ["haproxy", "ztunnel"])),
                    "goal": 1.5, "cmp": ">="})

    def ward_anon(phase):
        sides = rss.get("ward", {}).get(phase + "_anon") or {}
        return max(sides.values()) / 1024 if sides else None

    targets.append({"target": "anonymous memory per ward process idle ≤ 2 MiB", "value": ward_anon("idle"),
                    "goal": 2, "cmp": "<=", "unit": "MiB"})
    targets.append({"target": "anonymous memory per ward process 12 s after a saturating run ≤ 4 MiB",
                    "value": ward_anon("after_saturation_12s"), "goal": 4, "cmp": "<=", "unit": "MiB"})
    per_conn = v("idle", "ward", "front_anon_held_bytes_per_conn")
    targets.append({"target": f"anonymous memory per idle keep-alive connection ({idle_n} conns, the front, 13 s in) ≤ 3 KB",
                    "value": None if per_conn is None else per_conn / 1000, "goal": 3, "cmp": "<=", "unit": "KB"})
    targets.append({"target": "bulk throughput ≥ 1.8× haproxy",
                    "value": ratio(v("bulk", "ward", "mib_per_s"), v("bulk", "haproxy", "mib_per_s")),
                    "goal": 1.8, "cmp": ">="})
    for t in targets:
        if t["value"] is None:
            t["met"] = None
        else:
            t["met"] = t["value"] >= t["goal"] if t["cmp"] == ">=" else t["value"] <= t["goal"]

    problems = []
    for scn, per in res.items():
        for t, r in per.items():
            if not r:
                continue
            if "error" in r:
                problems.append(f"{scn}/{t}: {r['error']}")
                continue
            if "held_error" in r:
                problems.append(f"{scn}/{t}: {r['held_error']} (its 13 s rows are left out)")
            n = r.get("non_2xx", 0) + r.get("errors_total", 0) + r.get("failed", 0)
            if n:
                problems.append(f"{scn}/{t}: {n} failed or non-2xx requests")
    return rows, chart, targets, problems, rate_table


def markdown(meta, rows, targets, problems, rate_table):
    out = []
    out.append(f"Machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu', '?')}, {meta.get('kernel', '?')}, "
               f"{meta.get('os', '?')}; load average at the end {meta.get('loadavg', '?')}.")
    out.append(f"Run: `benches/load/run.sh{' --quick' if meta.get('mode') == 'quick' else ''}` "
               f"({meta.get('mode')}, {meta.get('secs')} s per measurement; haproxy and nginx: {meta.get('threads')} "
               f"threads/processes each, ward: --workers {meta.get('ward_workers', meta.get('threads'))}{'; every pair pinned, outbound on CPU 0, inbound on CPU 1' if meta.get('pinned') == '1' else ''}); ward {meta.get('ward', '?')} ({meta.get('ward_commit', '?')}), "
               f"haproxy {meta.get('haproxy', '?')}, nginx {meta.get('nginx', '?')} + njs, "
               f"OpenSSL {meta.get('openssl', '?')}, wrk {meta.get('wrk', '?')}, h2load {meta.get('h2load', '?')}, "
               f"oha {meta.get('oha', '?')}.")
    out.append("")
    if rate_table:
        out.append(f"Fixed rate, {meta.get('rate_conns', '?')} keep-alive connections, {meta.get('rate_secs', '?')} s per "
                   "chain (oha, latency counted from the scheduled send): latency added over direct at the same "
                   "rate, and the CPU of both processes of the pair per request.")
        out.append("")
        out.append("| req/s | chain | served req/s | p50 added (µs) | p99 added (µs) | p99.9 added (µs) | "
                   "max added (µs) | CPU per request (µs) | vCPU per 1,000 req/s |")
        out.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in rate_table:
            if not e["ok"]:
                out.append(f"| {e['rate']:,} | {e['chain']} | failed: {e['error']} | | | | | | |")
                continue
            out.append(f"| {e['rate']:,} | {e['chain']} | {fmt(e['served_rps'])} | {fmt(e['p50_added_us'])} | "
                       f"{fmt(e['p99_added_us'])} | {fmt(e['p99.9_added_us'])} | {fmt(e['max_added_us'])} | "
                       f"{fmt(e['cpu_us_per_request'], 1)} | {fmt(e['vcpu_per_1k_rps'], 3)} |")
        out.append("")
    out.append("| metric | direct | ward pair | haproxy pair | nginx pair | ward / haproxy |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        c = r["cells"]
        out.append(f"| {r['metric']} | {c['direct'] if r['values'].get('direct') is not None else '—'} | "
                   f"{c['ward']} | {c['haproxy']} | {c['nginx']} | {fmt_ratio(r['ward_vs_haproxy'])} |")
    out.append("")
    out.append("| target | measured | met |")
    out.append("| --- | ---: | :---: |")
    for t in targets:
        val = "n/a" if t["value"] is None else (f"{t['value']:.1f} {t['unit']}" if t.get("unit") else f"{t['value']:.2f}×")
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        out.append(f"| {t['target']} | {val} | {met} |")
    notes = [r for r in rows if r["note"]]
    if notes:
        out.append("")
        for r in notes:
            out.append(f"- {r['metric']}: {r['note']}.")
    if problems:
        out.append("")
        out.append("Problems seen in this run:")
        for p in problems:
            out.append(f"- {p}")
    return "\n".join(out) + "\n"


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_chart(meta, chart):
    """A grouped bar chart of ward and nginx relative to haproxy (= 1), higher is better."""
    colors = {"ward": "#2b6cb0", "nginx": "#38a169"}
    groups = [(label, vals) for label, vals in chart if any(v is not None for v in vals.values())]
    width, left, top, bottom, group_w = 120 + 110 * max(len(groups), 1), 60, 60, 120, 110
    height = 420
    plot_h = height - top - bottom
    ymax = max([2.0] + [v for _, vals in groups for v in vals.values() if v is not None])
    ymax = min(ymax, 6.0)
    ymax = float(int(ymax + 0.999))

    def y(v):
        return top + plot_h - min(v, ymax) / ymax * plot_h

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="bold">ward and nginx relative to haproxy '
         f'(haproxy = 1, higher is better)</text>',
         f'<text x="{left}" y="40" fill="#555">{esc(meta.get("mode", ""))} run, {esc(meta.get("nproc", "?"))} CPUs, '
         f'{esc(meta.get("cpu", "?"))}; latency and memory are inverted (haproxy ÷ x)</text>']
    step = 0.5 if ymax <= 3 else 1.0
    t = 0.0
    while t <= ymax + 1e-9:
        yy = y(t)
        s.append(f'<line x1="{left}" x2="{width - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e2e8f0"/>')
        s.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#555">{t:g}×</text>')
        t += step
    for i, (label, vals) in enumerate(groups):
        x0 = left + 10 + i * group_w
        for j, p in enumerate(("ward", "nginx")):
            v = vals.get(p)
            bx = x0 + 15 + j * 36
            if v is None:
                s.append(f'<text x="{bx + 16}" y="{y(0) - 4:.1f}" text-anchor="middle" fill="#999">n/a</text>')
                continue
            s.append(f'<rect x="{bx}" y="{y(v):.1f}" width="32" height="{y(0) - y(v):.1f}" fill="{colors[p]}"/>')
            s.append(f'<text x="{bx + 16}" y="{y(v) - 4:.1f}" text-anchor="middle" font-size="11">'
                     f'{v:.2f}{"+" if v > ymax else ""}</text>')
        lx, ly = x0 + 50, y(0) + 14
        s.append(f'<text transform="translate({lx},{ly}) rotate(30)" font-size="11">{esc(label)}</text>')
    yy = y(1)
    s.append(f'<line x1="{left}" x2="{width - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#c53030" '
             f'stroke-dasharray="6,4"/>')
    s.append(f'<text x="{width - 22}" y="{yy - 4:.1f}" text-anchor="end" fill="#c53030">haproxy</text>')
    lx = left
    for p in ("ward", "nginx"):
        s.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{colors[p]}"/>')
        s.append(f'<text x="{lx + 16}" y="{height - 12}">{p}</text>')
        lx += 80
    s.append("</svg>")
    return "\n".join(s) + "\n"


def svg_fixed_rate(meta, rate_table):
    """Per rate: each chain's latency added over direct (p50, p99, p99.9) and CPU per request, as
    horizontal bars (lower is better)."""
    entries = [e for e in rate_table if e["ok"] and e["chain"] != "direct"]
    rates = sorted({e["rate"] for e in entries})
    colors = {"p50": "#90cdf4", "p99": "#3182ce", "p99.9": "#1a365d", "cpu": "#dd6b20"}
    label_w, bar_w, row_h, gap = 150, 330, 44, 30
    width = 40 + label_w + 2 * (bar_w + 60)
    height = 90 + sum(len([e for e in entries if e["rate"] == r]) * row_h + gap + 20 for r in rates) + 30
    lat_max = max([1.0] + [e[f"{k}_added_us"] or 0 for e in entries for k in ("p50", "p99", "p99.9")])
    cpu_max = max([1.0] + [e["cpu_us_per_request"] or 0 for e in entries])
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         '<text x="20" y="24" font-size="15" font-weight="bold">Fixed request rate: latency added over direct '
         'and CPU per request (lower is better)</text>',
         f'<text x="20" y="42" fill="#555">{esc(meta.get("rate_conns", "?"))} keep-alive connections, oha with '
         f'latency correction; {esc(meta.get("mode", ""))} run, {esc(meta.get("nproc", "?"))} CPUs, '
         f'{esc(meta.get("cpu", "?"))}</text>']
    x_lat, x_cpu = 20 + label_w, 20 + label_w + bar_w + 60
    s.append(f'<text x="{x_lat}" y="66" font-weight="bold">added latency (µs)</text>')
    s.append(f'<text x="{x_cpu}" y="66" font-weight="bold">CPU per request, both processes (µs)</text>')
    y = 80
    for rate in rates:
        s.append(f'<text x="20" y="{y + 12}" font-weight="bold">{rate:,} req/s</text>')
        y += 20
        for e in [e for e in entries if e["rate"] == rate]:
            s.append(f'<text x="{20 + label_w - 8}" y="{y + row_h / 2 + 4:.0f}" text-anchor="end">{esc(e["chain"])}</text>')
            for i, k in enumerate(("p50", "p99", "p99.9")):
                val = e[f"{k}_added_us"]
                by = y + 2 + i * 13
                if val is None:
                    continue
                w = max(val, 0) / lat_max * bar_w
                s.append(f'<rect x="{x_lat}" y="{by}" width="{w:.1f}" height="11" fill="{colors[k]}"/>')
                s.append(f'<text x="{x_lat + w + 4:.1f}" y="{by + 10}" font-size="10">{k} {val:,.0f}</text>')
            cpu = e["cpu_us_per_request"]
            if cpu is not None:
                w = cpu / cpu_max * bar_w
                s.append(f'<rect x="{x_cpu}" y="{y + 8}" width="{w:.1f}" height="20" fill="{colors["cpu"]}"/>')
                s.append(f'<text x="{x_cpu + w + 4:.1f}" y="{y + 22}" font-size="11">{cpu:,.1f}</text>')
            y += row_h
        y += gap
    s.append("</svg>")
    return "\n".join(s) + "\n"


def report(args):
    meta, res, rss = collect(args.raw)
    rows, chart, targets, problems, rate_table = build(meta, res, rss)
    md = markdown(meta, rows, targets, problems, rate_table)
    os.makedirs(args.out, exist_ok=True)
    doc = {
        "machine": {k: meta.get(k) for k in ("nproc", "cpu", "kernel", "os", "mem_total_kib", "loadavg")},
        "run": {k: meta.get(k) for k in ("mode", "secs", "threads", "ward_workers", "pinned", "idle_conns",
                                         "bulk_mib", "rates", "rate_conns", "rate_secs")},
        "versions": {k: meta.get(k) for k in ("ward", "ward_commit", "haproxy", "nginx", "openssl", "wrk", "h2load",
                                              "oha", "ztunnel")},
        "fixed_rate": rate_table,
        "results": res,
        "rss_kib": rss,
        "table": [{k: r[k] for k in ("metric", "values", "ward_vs_haproxy", "better", "note")} for r in rows],
        "targets": targets,
        "problems": problems,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "chart.svg"), "w") as f:
        f.write(svg_chart(meta, chart))
    with open(os.path.join(args.out, "fixed_rate.svg"), "w") as f:
        f.write(svg_fixed_rate(meta, rate_table))
    print()
    print(md)
    print(f"written: {args.out}/results.json, results.md, chart.svg, fixed_rate.svg (raw outputs in {args.raw})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("san-hex")
    p.add_argument("id")
    p = sub.add_parser("oha-summary")
    p.add_argument("file")
    p = sub.add_parser("report")
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "san-hex":
        print(san_hex(args.id))
    elif args.cmd == "oha-summary":
        r = parse_oha(read(args.file))
        if not r or "error" in r:
            print("failed" + (f": {r['error']}" if r else ""))
        else:
            print(f"served {fmt(r['rps'])} req/s, p50 {fmt(r['p50_us'])} µs, p99 {fmt(r['p99_us'])} µs, "
                  f"max {fmt(r['max_us'])} µs" + (f", {r['non_2xx'] + r['errors_total']} failed" if r['non_2xx'] + r['errors_total'] else ""))
    else:
        report(args)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the labelling server: answers per second it stores under concurrent clients on loopback.

Usage: ``python scripts/bench_label_server.py [--clients 8] [--queries 3000] [--seconds 10]``

Builds a run directory with ``--queries`` pending queries (real mp4 clips, shared between queries),
serves it from a separate process (``rlhf_control.web.server.serve``, as ``rlhf-control label`` does)
and runs ``--clients`` threads, each on its own keep-alive connection: claim the next query
(``GET /api/next``), post an answer (``POST /api/answer``), repeat, until no query is left or time is
up. The figure is acknowledged answers per second; afterwards the store is reopened and must hold
exactly the acknowledged answers (none lost, none twice).
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rlhf_control.rundir import CLIPS_DIR, STORE_FILE
from rlhf_control.store.store import PreferenceStore
from rlhf_control.web.demo import BrightnessRenderer, add_queries, make_segments


def build_run(run_dir: Path, n_queries: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    segments = make_segments(16, rng)
    renderer = BrightnessRenderer()
    clips = {s.uid: renderer.render_segment(s, run_dir / CLIPS_DIR) for s in segments}
    with PreferenceStore.create(run_dir / STORE_FILE) as store:
        for q in add_queries(store, segments, n_queries, rng):
            store.set_clips(q.query_id, clips[q.pair.first.uid], clips[q.pair.second.uid], None)


def client(port: int, name: str, stop_at: float, acked: list, latencies: list, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            conn.request("GET", f"/api/next?labeller={name}")
            r = conn.getresponse()
            body = r.read()
            if r.status == 204:
                return
            if r.status != 200:
                errors.append((r.status, body[:200]))
                return
            qid = json.loads(body)["query_id"]
            label = (qid % 3) - 1
            conn.request("POST", "/api/answer", body=json.dumps({"query_id": qid, "label": label, "labeller": name,
                                                                 "seconds": 1.0}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                errors.append((r.status, body[:200]))
                return
            latencies.append(time.perf_counter() - t0)
            acked.append((qid, label, name))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--queries", type=int, default=6000)
    p.add_argument("--seconds", type=float, default=10.0, help="stop the clients after this long")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_label_") as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        build_run(run_dir, args.queries)
        print(f"built {args.queries} queries in {time.perf_counter() - t:.1f} s", flush=True)
        code = "import sys; from rlhf_control.web.server import serve; serve(sys.argv[1], port=0)"
        proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
            acked: list = []
            latencies: list = []
            errors: list = []
            start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(port, f"c{k}", start + args.seconds, acked, latencies,
                                                             errors)) for k in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()

        with PreferenceStore.open(run_dir / STORE_FILE) as store:
            stored = {a.query_id: (a.label, a.labeller) for _, a in store.answers_since(0)}
            n_stored = store.count_answers()
        expected = {q: (label, name) for q, label, name in acked}
        lost = sum(1 for q, v in expected.items() if stored.get(q) != v)
        lat = np.array(latencies) * 1000
        print(f"clients={args.clients} acknowledged={len(acked)} in {elapsed:.2f} s -> "
              f"{len(acked) / elapsed:.0f} answers/s (claim + answer each); latency ms p50={np.median(lat):.1f} "
              f"p95={np.percentile(lat, 95):.1f}")
        print(f"store: {n_stored} answers, {len(expected)} distinct acknowledged, lost={lost}, "
              f"extra={n_stored - len(expected)}, duplicates acknowledged={len(acked) - len(expected)}, "
              f"errors={len(errors)}")
        ok = lost == 0 and n_stored == len(expected) == len(acked) and not errors
        print("OK" if ok else f"FAILED {errors[:3]}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

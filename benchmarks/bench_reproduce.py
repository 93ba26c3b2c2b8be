"""Where the time of `dp-reproduce --scale digits` goes, and what its levers buy, measured side by side in one process.

    python benchmarks/bench_reproduce.py [--rows 4] [--seeds 2] [--epochs 20] [--workers 2]

1. start-up: `python -c "import deliberate_practice.ablation"` and the generator + data load (`scale_parts`), in fresh subprocesses;
2. one run, by part: the initial pool (100 images, shared by the rows of a seed) against a whole run;
3. the outputs: `results.json` alone against `results.json` + `results.md` + `scaling.png` (what a reproduction wrote after every run before);
4. the runs: `reproduce` in this process with one thread, with `--workers` threads, and in `--workers` processes of one thread each,
   same configurations, with the check that the workers give the one-thread numbers;
5. generation in one batch (`gen_batch_size=None`) against batches of 100, per image, at 1,600 images.
`--table` instead times the whole digits table (8 rows x 9 seeds, `--workers` processes) twice, side by side: as it ran before issue 28
(spawned workers that import the stack again, the test split every epoch) and as it runs now (forked workers, the test split at the last
epoch only, `row_config`'s `test_every=0`), and checks that both give the same table.
The machine is shared: every case prints the load average beside it, and ratios are what to compare. Never asserts on time.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time
import torch
from unittest import mock
import deliberate_practice.ablation as ablation
from deliberate_practice.config import Sampling
from deliberate_practice.ablation import SEEDS, ROWS, row_config, reproduce, scale_parts, initial_pool, run_row, write_outputs

def _load(): return ' '.join(f'{x:.1f}' for x in os.getloadavg())

def _timed(f, reps=1):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), r

def main(rows=4, seeds=2, epochs=20, workers=2):
    torch.set_num_threads(1)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    imp, _ = _timed(lambda: subprocess.run([sys.executable, '-c', 'import deliberate_practice.ablation'], env=env, check=True), 3)
    parts_s, _ = _timed(lambda: subprocess.run([sys.executable, '-c', 'from deliberate_practice.ablation import *; scale_parts(row_config("static-wsd"))'],
                                               env=env, check=True), 3)
    print(f"start-up: import {imp:.1f} s, import + generator + data {parts_s:.1f} s   (load {_load()})")

    gen, data = scale_parts(row_config('static-wsd'))
    cfg = row_config('dp-p8-100', seed=0, epochs=epochs)
    pool_s, pool = _timed(lambda: initial_pool(cfg, gen, data), 3)
    run_s, res = _timed(lambda: run_row(cfg, 'dp-p8-100', tempfile.mkdtemp(), gen, data, initial_pool=pool))
    print(f"one dp-p8-100 run of {epochs} epochs: {run_s:.1f} s; its initial pool {pool_s:.2f} s ({pool_s / run_s:.1%}: what sharing it saves per row)   (load {_load()})")

    results = [dict(res, seed=s) for s in range(9)] + [dict(res, row='random-p8-100', seed=s) for s in range(9)]
    out = tempfile.mkdtemp()
    json_s, _ = _timed(lambda: write_outputs(results, out, report=False), 3)
    all_s, _ = _timed(lambda: write_outputs(results, out, 'bench'), 3)
    print(f"outputs after a run: results.json {json_s * 1000:.0f} ms; + results.md + scaling.png {all_s * 1000:.0f} ms ({all_s / json_s:.0f}x)   (load {_load()})")

    rs, ss = list(ROWS[-rows:]), list(range(seeds))          # the DP and random rows: the expensive ones
    strip = lambda res: [{k: v for k, v in r.items() if k != 'wall_s'} for r in res]
    serial_s, a = _timed(lambda: reproduce('digits', ss, rs, tempfile.mkdtemp(), progress=False, epochs=epochs, generator=gen, data=data))
    torch.set_num_threads(workers)
    threads_s, _ = _timed(lambda: reproduce('digits', ss, rs, tempfile.mkdtemp(), progress=False, epochs=epochs, generator=gen, data=data))
    torch.set_num_threads(1)
    par_s, b = _timed(lambda: reproduce('digits', ss, rs, tempfile.mkdtemp(), progress=False, epochs=epochs, workers=workers))
    print(f"{len(a)} runs of {epochs} epochs: one process, 1 thread {serial_s:.1f} s; one process, {workers} threads {threads_s:.1f} s; "
          f"{workers} worker processes, 1 thread each {par_s:.1f} s (incl. their start-up).\n"
          f"  workers / 1 thread: {serial_s / par_s:.2f}x faster; workers / {workers} threads: {threads_s / par_s:.2f}x faster; "
          f"workers give the 1-thread numbers: {strip(a) == strip(b)}   (load {_load()})")

    labels = torch.arange(1600) % 10
    one_s, _ = _timed(lambda: gen.sample(labels, Sampling(n_steps=10, batch_size=None), seed=0))
    cap_s, _ = _timed(lambda: gen.sample(labels, Sampling(n_steps=10, batch_size=100), seed=0))
    print(f"1,600 images, 10 DDIM steps: one batch {one_s:.1f} s, batches of 100 {cap_s:.1f} s (one batch / capped: {one_s / cap_s:.2f}x)   (load {_load()})")

def table(workers=2):
    "The whole digits table, the way it ran before (spawn, test every epoch) and now, side by side; the same numbers?"
    torch.set_num_threads(1)
    def run(**kw): return _timed(lambda: reproduce('digits', SEEDS, ROWS, tempfile.mkdtemp(), progress=False, workers=workers, **kw))
    with mock.patch.object(ablation, 'WORKER_START', 'spawn'): before_s, a = run(test_every=1)
    now_s, b = run()
    last = lambda r: {k: v for k, v in r.items() if k not in ('wall_s', 'config', 'history')}
    curve = lambda h: [{**e, 'wall_s': 0, 'test_acc': e['test_acc'] if i == len(h) - 1 else None} for i, e in enumerate(h)]
    same = [(last(r), curve(r['history'])) for r in a] == [(last(r), curve(r['history'])) for r in b]
    print(f"digits table, {len(a)} runs, {workers} workers: before {before_s:.0f} s, now {now_s:.0f} s ({before_s / now_s:.2f}x faster); "
          f"same results and val curves: {same}   (load {_load()})")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rows', type=int, default=4); p.add_argument('--seeds', type=int, default=2)
    p.add_argument('--epochs', type=int, default=20); p.add_argument('--workers', type=int, default=2)
    p.add_argument('--table', action='store_true', help='only the whole digits table, before and now (about 11 min on 2 cores)')
    a = p.parse_args()
    table(a.workers) if a.table else main(a.rows, a.seeds, a.epochs, a.workers)

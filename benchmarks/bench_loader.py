"""Read rate of an on-disk pool at 224 px, read the way `DPTrainer.train_epoch` reads it, per loader worker.

    flock /tmp/cpu.lock python benchmarks/bench_loader.py [--n 4096] [--shard-sizes 256 2048]
        [--workers 0 1 2] [--batch-sizes 64] [--draws 3] [--reps 3] [--cold] [--out table.md]

Writes a synthetic pool (random uint8 3x224x224 images) with `Pool.write_shards` to a temporary folder
per shard size, opens it with `Pool.load`, and reads `--draws` shuffled passes over it through
`DataLoader(pool, batch, sampler=order, num_workers=w)` (`LabelledImages.__getitems__`: one read per
batch, uint8 -> float32 in [0, 1], default collate). Prints images/s and images/s per core (w = 0: the
main process; w >= 1: per worker), best of `--reps` interleaved reps, then a per-batch breakdown in one
process: shard read (uint8), float conversion, collate, and `augment_batch` 'crop_flip' on the CPU (the
trainer runs it on the device). `--cold` evicts the shards from the page cache (posix_fadvise) before
each rep. Writes nothing but the temporary pools (deleted) and `--out`. Never asserts on time.
"""
import argparse, gc, os, platform, statistics, subprocess, tempfile, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate
from deliberate_practice.pool import Pool
from deliberate_practice.store import as_float
from deliberate_practice.trainer import augment_batch

SIDE = 224


def write_pool(root:Path, n:int, shard_size:int, n_classes:int=100, seed:int=0):
    "A pool folder of `n` random uint8 3x224x224 images, written batch by batch with `Pool.write_shards`."
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    batches = (torch.randint(0, 256, (min(512, n - a), 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
               for a in range(0, n, 512))
    Pool.write_shards(batches, labels, root, shard_size)


def evict(root:Path):
    "Drop the pool's files from the page cache (no open mapping may hold them)."
    for p in root.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally: os.close(fd)


def epoch_order(n:int, draws:int, seed:int)->list:
    "`draws` random permutations of the pool, one after the other (the trainer's order, repeated)."
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(draws)]).tolist()


def read_rate(root:Path, batch:int, workers:int, order:list, cold:bool)->float:
    "Images/s of one pass of a fresh `DataLoader` over `order` (worker start-up included, as in each epoch)."
    gc.collect()
    if cold: evict(root)
    pool = Pool.load(root)
    dl = DataLoader(pool, batch, sampler=order, num_workers=workers, drop_last=True)
    t, n = time.perf_counter(), 0
    for x, y in dl: n += len(x)
    dt = time.perf_counter() - t
    del dl, pool
    return n / dt


def per_batch(f, reps:int)->float:
    "Median seconds of `f()` over `reps` calls."
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def breakdown(root:Path, batch:int, reps:int, seed:int=0)->dict:
    "Images/s of each step of a training batch in one process: read, to float, collate, crop_flip on the CPU."
    pool, g = Pool.load(root), torch.Generator().manual_seed(seed)
    idx = lambda: torch.randperm(len(pool), generator=g)[:batch]
    pool.store.get(idx())                                                       # open the files
    u8 = pool.store.get(idx()); x = as_float(u8); items = list(zip(x, [0] * batch))
    xb, crops = default_collate(items)[0], torch.Generator().manual_seed(seed)
    t = dict(read=per_batch(lambda: pool.store.get(idx()), reps),
             to_float=per_batch(lambda: as_float(u8), reps),
             collate=per_batch(lambda: default_collate(items), reps),
             crop_flip_cpu=per_batch(lambda: augment_batch(xb, 'crop_flip', crops), reps))
    t['loader_path'] = t['read'] + t['to_float'] + t['collate']
    return {k: batch / v for k, v in t.items()}


def cpu_name()->str:
    try: out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    except OSError: return platform.processor() or 'unknown'
    names = [l.split(':', 1)[1].strip() for l in out.splitlines() if l.startswith('Model name')]
    return names[0] if names else 'unknown'


def table(rows:list)->str:
    "Markdown table of the loader rows."
    head = ('| shard size | batch | num_workers | cache | images/s | cores used | images/s per core |\n'
            '|---:|---:|---:|:---|---:|---:|---:|\n')
    return head + ''.join(f"| {r['shard_size']} | {r['batch']} | {r['workers']} | {r['cache']} | "
                          f"{r['rate']:,.0f} | {r['cores']} | {r['per_core']:,.0f} |\n" for r in rows)


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=4096, help='images in the pool')
    p.add_argument('--shard-sizes', type=int, nargs='+', default=[256, 2048],
                   help='images per shard (2048: the default)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='DataLoader num_workers values')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[64], help='images per DataLoader batch')
    p.add_argument('--draws', type=int, default=3, help='shuffled passes over the pool per timed rep')
    p.add_argument('--reps', type=int, default=3, help='interleaved reps per setting (best reported)')
    p.add_argument('--cold', action='store_true', help='also measure with the shards out of the page cache')
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
    p.add_argument('--dir', default=None, help='folder for the temporary pools (default: the system temp)')
    p.add_argument('--out', default=None, help='also write the tables as markdown here')
    return p.parse_args()


def main():
    a = parse(); torch.set_num_threads(a.threads)
    cores = os.cpu_count()
    print(f"CPU: {cpu_name()}, {cores} cores; torch {torch.__version__}; "
          f"pool {a.n} images 3x{SIDE}x{SIDE} uint8")
    caches = ['warm', 'cold'] if a.cold else ['warm']
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        roots = {s: Path(tmp) / f'pool-{s}' for s in a.shard_sizes}
        for s, r in roots.items(): write_pool(r, a.n, s)
        order = epoch_order(a.n, a.draws, seed=1)
        keys = [(s, b, w, c) for s in a.shard_sizes for b in a.batch_sizes for w in a.workers for c in caches]
        best = {k: 0. for k in keys}
        for rep in range(a.reps):                                   # reps interleaved over the settings
            for k in keys:
                best[k] = max(best[k], read_rate(roots[k[0]], k[1], k[2], order, k[3] == 'cold'))
            print(f"rep {rep + 1}/{a.reps} done", flush=True)
        used = lambda w: max(1, min(w, cores))                     # cores the loader occupies
        rows = [dict(shard_size=s, batch=b, workers=w, cache=c, rate=best[(s, b, w, c)], cores=used(w),
                     per_core=best[(s, b, w, c)] / used(w)) for s, b, w, c in keys]
        parts = {(s, b): breakdown(roots[s], b, 5 * a.reps) for s in a.shard_sizes for b in a.batch_sizes}
    load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    out = f"CPU: {cpu_name()}, {cores} cores; torch {torch.__version__}; load average at the end {load}\n\n"
    out += table(rows)
    out += ('\n| shard size | batch | read (uint8) | to float | collate | loader path | crop_flip (CPU) |\n'
            '|---:|---:|---:|---:|---:|---:|---:|\n')
    steps = ('read', 'to_float', 'collate', 'loader_path', 'crop_flip_cpu')
    out += ''.join(f"| {s} | {b} | " + ' | '.join(f"{p[k]:,.0f}" for k in steps) + ' |\n'
                   for (s, b), p in parts.items())
    out += '\n(breakdown: images/s of each step alone in one process, median of per-batch times)\n'
    print(out)
    if a.out: Path(a.out).write_text(out)


if __name__ == '__main__': main()

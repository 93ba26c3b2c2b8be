"""Start-up time of the command lines, measured side by side in one run (issue 17's target: `--help` under 2 s).

Rows: `dp-train --help`, `dp-reproduce --help`, `dp-train --print-config` (ImageNet-100), and, for scale, a bare `python -c pass` and
`python -c "import torch"`. Each is run `--repeats` times, interleaved, best time kept; prints seconds and the ratio to `import torch`.
No assertions on time.

    python benchmarks/bench_cli.py [--repeats 5]
"""
import argparse, os, shutil, subprocess, sys, time

ROWS = [('python -c pass', [sys.executable, '-c', 'pass']),
        ('python -c "import torch"', [sys.executable, '-c', 'import torch']),
        ('dp-train --help', ['dp-train', '--help']),
        ('dp-reproduce --help', ['dp-reproduce', '--help']),
        ('dp-train --print-config (imagenet100)', ['dp-train', '--out', '/tmp/bench-cli-unused', '--dataset', 'imagenet100', '--data-root', '/data',
                                                   '--sd-path', '/sd', '--print-config'])]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=5)
    args = ap.parse_args()
    rows = [(n, c) for n, c in ROWS if shutil.which(c[0]) or os.path.exists(c[0])]
    best = {n: float('inf') for n, _ in rows}
    for _ in range(args.repeats):
        for name, cmd in rows:
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            best[name] = min(best[name], time.perf_counter() - t0)
    ref = best['python -c "import torch"']
    print(f"best of {args.repeats}, rows interleaved; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, _ in rows: print(f"{name:<42} {best[name]:6.2f} s   {best[name] / ref:5.2f}x import torch")

if __name__ == '__main__': main()

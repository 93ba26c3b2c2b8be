"""Cost of entropy guidance per DDIM step, measured side by side in one run.

Rows, for the shipped digits generator (batch 100, 20 steps) and the tiny random-weight Stable Diffusion pipeline:
plain CFG (omega 0); guided with eps detached (the default at digits scale); guided through the denoiser
(`grad_through_denoiser=True`); guided with eps detached every 5th step (`guide_every=5`).
Prints seconds per DDIM step and the ratio to plain CFG. No assertions on time.

    python benchmarks/bench_guidance.py [--repeats 5] [--threads N] [--device cuda]
"""
import argparse, dataclasses, time
import timm
import torch
import deliberate_practice.models  # noqa: F401  registers the timm `digits_cnn`
from deliberate_practice.config import Sampling
from deliberate_practice.generators import StableDiffusionGenerator, load_digits_generator, tiny_sd_components

ROWS = [('plain CFG', Sampling(omega=0.0)),
        ('guided, eps detached', Sampling(omega=0.1)),
        ('guided, through denoiser', Sampling(omega=0.1, grad_through_denoiser=True)),
        ('guided, eps detached, guide_every=5', Sampling(omega=0.1, guide_every=5))]


def bench(name, gen, labels, classifier, n_steps, repeats):
    "Seconds per DDIM step of each row: rows interleaved within every repeat (so background load hits all alike), best of `repeats`."
    print(f"\n{name}: batch {len(labels)}, {n_steps} DDIM steps, best of {repeats} (rows interleaved)")
    for _, s in ROWS: gen.sample(labels[:2], dataclasses.replace(s, n_steps=2), classifier=classifier)   # warm-up
    best = {row: float('inf') for row, _ in ROWS}
    for r in range(repeats):
        for row, s in ROWS:
            t0 = time.perf_counter()
            gen.sample(labels, dataclasses.replace(s, n_steps=n_steps), classifier=classifier, seed=r)
            best[row] = min(best[row], (time.perf_counter() - t0) / n_steps)
    base = best[ROWS[0][0]]
    for row, s in best.items(): print(f"  {row:<38} {s * 1e3:8.2f} ms/step   {s / base:5.2f}x plain CFG")
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, cuda={torch.cuda.is_available()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)   # classifier weights do not change the cost; seeded for a repeatable run
        digits_clf = timm.create_model('digits_cnn', num_classes=10, in_chans=1).to(a.device)
        sd_clf = timm.create_model('resnet10t', num_classes=3, pretrained=False).to(a.device)
    bench('digits generator (shipped weights)', load_digits_generator(a.device), torch.arange(10).repeat(10), digits_clf, 20, a.repeats)
    sd = StableDiffusionGenerator(**tiny_sd_components(), class_names=['tench', 'goldfish', 'shark'], classifier_size=32,
                                  device=a.device, dtype=torch.float32)
    bench('tiny Stable Diffusion (random weights, 16x16 images, classifier at 32x32)', sd, torch.arange(3).repeat(3), sd_clf, 20, a.repeats)


if __name__ == '__main__': main()

"""One training epoch of `DPTrainer` against a bare PyTorch loop over the same pool, model and batch size, measured side by side.

    python benchmarks/bench_trainer.py [--reps 15] [--pool-size 500] [--full] [--threads 1]

The bare loop is the textbook one: `DataLoader(pool, batch_size, shuffle=True)`, AdamW, cross-entropy, zero_grad/backward/step.
`DPTrainer.train_epoch` adds the LR schedule, the seeded order (`RandomSampler` with a per-epoch generator), the global-RNG scope
and the running pool entropy. Reps alternate between the two so load changes on a shared machine hit both alike; medians are compared.
`--full` also times a whole `fit` epoch (train + real val/test evaluation + atomic checkpoint, no refresh) for reference.
Goal: train_epoch / bare <= 1.05. Never asserts on time.
`dp_lomo_cached` is `train_epoch` with accelerate's `is_lomo_available()` answered from a cache: `AcceleratedOptimizer.step`
asks it twice per step through an uncached `importlib.util.find_spec` (accelerate 1.16), about 0.2 ms per step on CPU. That case shows
what the remaining overhead is: a library lookup, not the trainer (negligible beside a ViT-B step on a GPU, about 4% of a digits step).
`bare_accelerate` is the bare loop with accelerate's `backward` and prepared optimizer (what lets the same loop run on many GPUs and in
mixed precision): `dp_train_epoch` over it is the trainer's own part (DP's running pool entropy, the seeded order, the WSD schedule,
the preemption polls).
"""
import argparse, copy, functools, statistics, tempfile, time
from unittest import mock
import accelerate.optimizer
import torch
from torch import nn
from torch.utils.data import DataLoader
from deliberate_practice.trainer import DPConfig, DPTrainer

def main(reps=15, pool_size=500, full=False):
    cfg = DPConfig(pool_size=pool_size, n_steps=4, selection='none', epochs=10_000)   # n_steps: the pool's content does not change the timing
    trainer = DPTrainer(cfg, out=tempfile.mkdtemp() if full else None)
    trainer.build_pool()
    model = copy.deepcopy(trainer.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    def bare(epoch):
        model.train()
        for x, y in DataLoader(trainer.pool, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    model_a = copy.deepcopy(trainer.model)                                            # the bare loop through accelerate's wrappers
    opt_a = trainer.acc.prepare_optimizer(torch.optim.AdamW(model_a.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))

    def bare_accelerate(epoch):
        model_a.train()
        for x, y in DataLoader(trainer.pool, cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            loss = loss_fn(model_a(x), y)
            opt_a.zero_grad(set_to_none=True); trainer.acc.backward(loss); opt_a.step()

    def dp(epoch): trainer.train_epoch(); trainer.epoch += 1
    lomo = functools.cache(accelerate.optimizer.is_lomo_available)
    def dp_lomo_cached(epoch):
        with mock.patch.object(accelerate.optimizer, 'is_lomo_available', lomo): dp(epoch)
    def fit_epoch(epoch): trainer.fit(stop_after=1)

    cases = dict(bare=bare, bare_accelerate=bare_accelerate, dp_train_epoch=dp, dp_lomo_cached=dp_lomo_cached, **(dict(dp_fit_epoch=fit_epoch) if full else {}))
    times = {k: [] for k in cases}
    for f in cases.values(): f(0)                                                     # warm-up
    for r in range(reps):
        for k, f in cases.items():
            t0 = time.perf_counter(); f(r + 1); times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = trainer.steps_per_epoch
    print(f"pool {pool_size}, batch {cfg.batch_size}, {steps} steps/epoch, model {cfg.model}, {reps} reps, torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:>15}: median {v * 1e3:7.1f} ms/epoch  ({v / steps * 1e3:.2f} ms/step)  ratio to bare {v / med['bare']:.3f}")
    print(f"overhead of DPTrainer.train_epoch over the bare loop: {(med['dp_train_epoch'] / med['bare'] - 1) * 100:+.1f}% (goal <= 5%); "
          f"{(med['dp_lomo_cached'] / med['bare'] - 1) * 100:+.1f}% with accelerate's per-step package lookup cached")
    print(f"the trainer's own part (train_epoch over the same loop through accelerate): {(med['dp_train_epoch'] / med['bare_accelerate'] - 1) * 100:+.1f}%; "
          f"accelerate's wrappers: {(med['bare_accelerate'] / med['bare'] - 1) * 100:+.1f}%")
    return med

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=15); p.add_argument('--pool-size', type=int, default=500)
    p.add_argument('--full', action='store_true')
    p.add_argument('--threads', type=int, default=0, help='torch intra-op threads (0: torch default); 1 is steadier on a loaded machine')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    main(a.reps, a.pool_size, a.full)

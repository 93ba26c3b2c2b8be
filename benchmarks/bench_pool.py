"""Pool scoring throughput vs a bare batched no-grad forward of the same model over the same images, side by side in one run.

    python benchmarks/bench_pool.py [--n 20000] [--batch_size 256] [--repeats 5] [--threads 1]

Prints images/s for: the bare loop (model in eval mode, `torch.no_grad`, slicing one float tensor), `Pool.score` on an in-memory pool,
and `Pool.score` on an on-disk pool (uint8 shards, memory-mapped), with the ratio pool/bare (goal >= 0.9). Never asserts on time."""
import statistics, tempfile, time
import torch
from fastcore.script import call_parse
from deliberate_practice.pool import Pool


def digits_cnn(n_classes=10, in_chans=1):
    "The contract's digits classifier: conv 32, conv 64, maxpool, conv 64, global average pool, linear."
    c = lambda i, o: torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU())
    return torch.nn.Sequential(c(in_chans, 32), c(32, 64), torch.nn.MaxPool2d(2), c(64, 64),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, n_classes))


def bare(model, x, batch_size):
    model.eval()
    with torch.no_grad():
        for s in range(0, len(x), batch_size): model(x[s:s + batch_size])


def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t


@call_parse
def main(n:int=20000,          # images in the pool
         batch_size:int=256,   # forward batch size (both sides)
         repeats:int=5,        # timed repeats per contender (median reported), interleaved
         threads:int=1,        # torch CPU threads
         size:int=8,           # image side (8: digits)
         chans:int=1,          # image channels
        ):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = digits_cnn(10, chans).to(device)
    # images on the uint8 grid, so the disk pool holds exactly the same pixels as the memory pool
    x = torch.randint(0, 256, (n, chans, size, size), generator=torch.Generator().manual_seed(0)).float() / 255
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    mem = Pool(x, labels)
    tmp = tempfile.TemporaryDirectory()
    disk = Pool(x, labels, root=f'{tmp.name}/pool', shard_size=4096)
    xd = x.to(device)                                   # the bare loop gets its images already on the device
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    contenders = {'bare forward': lambda: bare(model, xd, batch_size),
                  'Pool.score (memory)': lambda: mem.score(model, batch_size=batch_size),
                  'Pool.score (disk)': lambda: disk.score(model, batch_size=batch_size)}
    torch.testing.assert_close(mem.score(model), disk.score(model))
    for f in contenders.values(): f()                  # warm up
    times = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, f in contenders.items(): times[k].append(timed(lambda: (f(), sync())))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device={device} threads={threads} n={n} images={chans}x{size}x{size} batch_size={batch_size} repeats={repeats} (median)")
    for k, t in med.items():
        print(f"{k:22s} {n / t:10.0f} img/s   ratio vs bare {med['bare forward'] / t:.3f}x")
    tmp.cleanup()

"""Pool tests that do not belong in the docs: crash/atomicity, bad inputs, a multi-shard disk store, resume from checkpoints."""
import math, os, pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from deliberate_practice.config import Sampling
from deliberate_practice.guidance import entropy
from deliberate_practice.pool import Pool
from deliberate_practice.store import INDEX, read_index


class FakeGenerator:
    """Cheap stand-in for the generators' contract. Images depend on the labels (a class-specific level plus seeded noise),
    are deterministic per seed, and lie on the uint8 grid k/255 so a disk pool holds them exactly. `omega` adds noise."""
    n_classes, class_names, image_shape = 5, list('abcde'), (1, 4, 4)

    def __init__(self, n_nonfinite=0, fail_after=None):
        self.calls, self.n_nonfinite, self.fail_after = [], n_nonfinite, fail_after

    def sample(self, labels, sampling=Sampling(), classifier=None, seed=0, progress=False, return_stats=False):
        if self.fail_after is not None and len(self.calls) >= self.fail_after: raise RuntimeError("generator crashed")
        omega = sampling.omega
        self.calls.append(dict(labels=labels.clone(), omega=omega, seed=seed, classifier=classifier, sampling=sampling))
        g = torch.Generator().manual_seed(seed)
        x = (labels.float() + 0.5)[:, None, None, None] / self.n_classes + (0.1 + omega) * torch.randn(len(labels), *self.image_shape, generator=g)
        x = (x.clamp(0, 1) * 255).round().float() / 255
        return (x, SimpleNamespace(n_nonfinite=self.n_nonfinite)) if return_stats else x


def make_classifier(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.Dropout(0.3))


def balanced(n_per_class, n_classes=5): return torch.arange(n_classes).repeat_interleave(n_per_class)


def assert_same(p, q, atol=0.0):
    for k in ('labels', 'born', 'omega', 'entropy_at_birth'):
        torch.testing.assert_close(getattr(p, k), getattr(q, k), rtol=0, atol=0, equal_nan=True)
    assert (p.n_generated, p.round, len(p)) == (q.n_generated, q.round, len(q))
    assert (p.get_images(slice(None)) - q.get_images(slice(None))).abs().max() <= atol


def pool_files(root): return sorted(p.name for p in Path(root).iterdir())


# ---------------------------------------------------------------- refresh semantics

@pytest.mark.parametrize("selection, metric", [("entropy", "entropy"), ("random", "entropy"), ("entropy", "margin"), ("entropy", "loss")])
@pytest.mark.parametrize("prune_frac", [0.1, 0.25, 0.5, 1.0])
def test_refresh_keeps_size_and_exact_class_counts(selection, metric, prune_frac):
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(20), Sampling(), seed=0)
    r = pool.refresh(gen, clf, prune_frac, Sampling(omega=0.05), selection=selection, metric=metric, seed=1)
    k = round(prune_frac * 100)
    assert (len(pool), pool.class_counts(5), r['n_pruned'], r['n_new']) == (100, [20] * 5, k, k)
    assert len(r['pruned_indices'].unique()) == k
    assert (pool.born[r['pruned_indices']] == 1).all() and (pool.born == 1).sum() == k


@pytest.mark.parametrize("metric", ["entropy", "margin", "loss"])
def test_selection_prunes_exactly_the_k_lowest(metric):
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(40), Sampling(), seed=0)
    s = pool.score(clf, metric)
    r = pool.refresh(gen, clf, 0.3, Sampling(omega=0.05), metric=metric, seed=1)
    pruned = r['pruned_indices']
    kept = torch.ones(200, dtype=torch.bool); kept[pruned] = False
    assert len(pruned) == 60 and s[pruned].max() <= s[kept].min()
    assert torch.equal(pruned, torch.sort(s, stable=True).indices[:60].sort().values)
    if metric == 'entropy': assert math.isclose(r['mean_entropy_pruned'], s[pruned].mean().item(), rel_tol=1e-6)


def test_random_selection_is_seeded():
    gen, clf = FakeGenerator(), make_classifier()
    runs = []
    for seed in (7, 7, 8):
        pool = Pool.generate(gen, balanced(20), Sampling(), seed=0)
        runs.append((pool.refresh(gen, clf, 0.5, Sampling(omega=0.0), selection='random', seed=seed)['pruned_indices'], pool))
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])
    assert_same(runs[0][1], runs[1][1])


def test_replacements_are_the_generators_images_with_the_same_labels_and_provenance():
    gen, clf = FakeGenerator(n_nonfinite=2), make_classifier()
    pool = Pool.generate(gen, balanced(10), Sampling(), seed=0)
    labels_before = pool.labels.clone()
    r = pool.refresh(gen, clf, 0.4, Sampling(omega=0.07, cfg_scale=3.0, guide_every=2), seed=5)
    new = r['pruned_indices']
    call = gen.calls[-1]
    assert call['sampling'] == Sampling(omega=0.07, cfg_scale=3.0, guide_every=2)   # every option reaches the generator
    assert torch.equal(call['labels'], labels_before[new]) and call['omega'] == 0.07 and call['seed'] == 5 and call['classifier'] is clf
    expected = gen.sample(labels_before[new], Sampling(omega=0.07), seed=5)
    assert torch.equal(pool.get_images(new), expected)
    assert torch.equal(pool.labels, labels_before)
    torch.testing.assert_close(pool.entropy_at_birth[new], entropy(clf.eval()(expected)).detach())
    assert torch.allclose(pool.omega[new], torch.tensor(0.07)) and (pool.omega[~torch.isin(torch.arange(50), new)] == 0).all()
    assert r['n_nonfinite'] == 2
    clf.train()
    torch.testing.assert_close(torch.tensor(r['mean_entropy_after']), pool.score(clf).mean(), rtol=1e-5, atol=1e-6)
    assert clf.training and all(m.training for m in clf)        # scoring restored train mode


def test_n_generated_arithmetic_grow_and_noop():
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(20), Sampling(), seed=0)
    assert (pool.n_generated, pool.round) == (100, 0)
    pool.refresh(gen, clf, 0.25, Sampling(omega=0.05), seed=1); pool.refresh(gen, clf, 1.0, Sampling(omega=0.05), seed=2)
    assert (pool.n_generated, pool.round, len(pool)) == (100 + 25 + 100, 2, 100)
    n_calls = len(gen.calls)
    r = pool.refresh(gen, clf, 0.0, Sampling(omega=0.05), seed=3)
    assert (r['n_new'], r['n_pruned'], len(gen.calls), pool.n_generated, pool.round) == (0, 0, n_calls, 225, 3)
    g = pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), grow=True, seed=4)
    assert (g['n_pruned'], g['n_new'], len(pool), pool.n_generated) == (0, 50, 150, 275)
    assert pool.class_counts(5) == [30] * 5 and (pool.born[100:] == 4).all()
    assert torch.equal(g['new_indices'], torch.arange(100, 150))


def test_failed_generation_leaves_the_pool_unchanged():
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(20), Sampling(), seed=0, shard_size=16)
    before = Pool.from_state_dict(pool.state_dict())
    gen.fail_after = len(gen.calls) + 1                  # the 2nd chunk of the refresh fails
    with pytest.raises(RuntimeError, match="generator crashed"): pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=1)
    assert_same(pool, before)


# ---------------------------------------------------------------- bad inputs

@pytest.fixture
def small():
    gen, clf = FakeGenerator(), make_classifier()
    return gen, clf, Pool.generate(gen, balanced(4), Sampling(), seed=0)


class WrongCountGenerator(FakeGenerator):
    def sample(self, labels, *a, **kw):
        x, s = super().sample(labels, *a, **kw)
        return x[:-1], s


@pytest.mark.parametrize("call, field", [
    (lambda g, c, p: p.refresh(g, c, -0.1, Sampling(omega=0.05)), "prune_frac"),
    (lambda g, c, p: p.refresh(g, c, 1.5, Sampling(omega=0.05)), "prune_frac"),
    (lambda g, c, p: p.refresh(g, c, float('nan'), Sampling(omega=0.05)), "prune_frac"),
    (lambda g, c, p: p.refresh(g, c, "half", Sampling(omega=0.05)), "prune_frac"),
    (lambda g, c, p: p.refresh(g, c, 0.5, Sampling(omega=0.05), selection="hardest"), "selection"),
    (lambda g, c, p: p.refresh(g, c, 0.5, Sampling(omega=0.05), metric="confidence"), "metric"),
    (lambda g, c, p: p.refresh(g, None, 0.5, Sampling(omega=0.05)), "classifier"),
    (lambda g, c, p: p.refresh(WrongCountGenerator(), c, 0.5, Sampling(omega=0.05)), "generator.sample returned"),
    (lambda g, c, p: p.score(c, metric="accuracy"), "metric"),
    (lambda g, c, p: p.score(c, batch_size=0), "batch_size"),
    (lambda g, c, p: Pool(torch.rand(3, 1, 4, 4), [0, 1]), "images"),
    (lambda g, c, p: Pool(torch.rand(2, 1, 4, 4), [0, 1], omega=[0.]), "omega"),
    (lambda g, c, p: Pool(torch.rand(2, 1, 4, 4), [0, -1]), "labels"),
    (lambda g, c, p: Pool.generate(g, [0, 5], Sampling()), "labels"),
    (lambda g, c, p: Pool.generate(g, [], Sampling()), "labels"),
    (lambda g, c, p: p.class_counts(3), "n_classes"),
    (lambda g, c, p: p.load_state_dict({'format': 'other'}), "format"),
])
def test_bad_inputs_raise_value_error_naming_the_field(small, call, field):
    gen, clf, pool = small
    before = pool.state_dict()
    with pytest.raises(ValueError, match=field): call(gen, clf, pool)
    assert_same(pool, Pool.from_state_dict(before))


def test_bad_paths(tmp_path):
    gen = FakeGenerator()
    Pool.generate(gen, balanced(2), Sampling(), root=tmp_path/'p')
    with pytest.raises(ValueError, match="already holds a pool"): Pool.generate(gen, balanced(2), Sampling(), root=tmp_path/'p')
    with pytest.raises(FileNotFoundError, match="no pool"): Pool.load(tmp_path/'missing')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=INDEX): Pool.load(tmp_path/'empty')


# ---------------------------------------------------------------- disk store

def test_disk_pool_equals_memory_pool_across_several_shards_and_refreshes(tmp_path):
    gen, clf = FakeGenerator(), make_classifier()
    labels = balanced(600)                                               # 3000 tiny images
    mem = Pool.generate(gen, labels, Sampling(), seed=0, shard_size=512)
    disk = Pool.generate(gen, labels, Sampling(), seed=0, shard_size=512, root=tmp_path/'pool')
    assert len(read_index(tmp_path/'pool')['shards']) == 6
    assert_same(disk, mem, atol=0.5 / 255 + 1e-7)
    for i, (frac, sel, metric) in enumerate([(0.25, 'entropy', 'entropy'), (0.6, 'random', 'entropy'), (0.25, 'entropy', 'entropy'), (0.1, 'entropy', 'margin')]):
        rm = mem.refresh(gen, clf, frac, Sampling(omega=0.05), selection=sel, metric=metric, seed=i)
        rd = disk.refresh(gen, clf, frac, Sampling(omega=0.05), selection=sel, metric=metric, seed=i)
        assert torch.equal(rm['pruned_indices'], rd['pruned_indices'])
    assert_same(disk, mem, atol=0.5 / 255 + 1e-7)                       # image-for-image, within uint8 quantization
    torch.testing.assert_close(disk.score(clf), mem.score(clf))
    reopened = Pool.load(tmp_path/'pool')
    assert_same(reopened, disk)
    # random minibatches through a DataLoader (batched reads via __getitems__), and a pickled copy for worker processes
    dl = torch.utils.data.DataLoader(disk, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    xb, yb = next(iter(dl))
    assert xb.shape == (64, 1, 4, 4) and yb.dtype == torch.long
    twin = pickle.loads(pickle.dumps(disk))
    idx = torch.randperm(3000, generator=torch.Generator().manual_seed(1))[:100]
    assert torch.equal(twin.get_images(idx), disk.get_images(idx))
    assert torch.equal(torch.stack([disk[int(i)][0] for i in idx]), disk.get_images(idx))


def test_disk_use_stays_bounded_and_stale_files_are_cleaned(tmp_path):
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(200), Sampling(), seed=0, shard_size=100, root=tmp_path/'pool')
    for i in range(12): pool.refresh(gen, clf, 0.25, Sampling(omega=0.05), seed=i)
    index = read_index(tmp_path/'pool')
    files = set(pool_files(tmp_path/'pool'))
    assert set(index['shards']) | {index['meta'], INDEX} <= files
    assert len(files) <= len(index['shards']) * 2 + 3                  # current + previous generation only
    stored = sum(pool.store._slice(k).get_shape()[0] for k in range(len(pool.store.shards)))
    assert stored <= 2 * len(pool) + 100                                # compaction keeps shards at least half alive


def test_resume_from_a_checkpoint_one_refresh_back(tmp_path):
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(50), Sampling(), seed=0, shard_size=64, root=tmp_path/'pool')
    pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=1)
    sd = pool.state_dict(); ref = Pool.from_state_dict(pickle.loads(pickle.dumps(sd)))
    pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=2)                                 # crash here, before the next checkpoint
    resumed = Pool.from_state_dict(sd)                                  # the trainer resumes from sd
    assert_same(resumed, ref)
    assert_same(Pool.load(tmp_path/'pool'), ref)                        # the disk index follows the checkpoint
    for s in (3, 4): resumed.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=s)
    with pytest.raises(FileNotFoundError, match="more than one refresh older"): Pool.from_state_dict(sd)


# ---------------------------------------------------------------- atomicity

def crashing_replace(monkeypatch, fail_on):
    real, count = os.replace, {'n': 0}
    def replace(src, dst):
        count['n'] += 1
        if fail_on(Path(dst), count['n']): raise OSError("simulated crash in os.replace")
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)


def test_crash_during_save_keeps_the_previous_file(tmp_path, monkeypatch):
    gen, clf = FakeGenerator(), make_classifier()
    pool = Pool.generate(gen, balanced(10), Sampling(), seed=0)
    pool.save(tmp_path/'pool.safetensors')
    saved = Pool.load(tmp_path/'pool.safetensors')
    pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=1)
    crashing_replace(monkeypatch, lambda dst, n: True)
    with pytest.raises(OSError, match="simulated crash"): pool.save(tmp_path/'pool.safetensors')
    monkeypatch.undo()
    assert pool_files(tmp_path) == ['pool.safetensors']                # no temp file left
    assert_same(Pool.load(tmp_path/'pool.safetensors'), saved)
    pool.save(tmp_path/'pool.safetensors')
    assert_same(Pool.load(tmp_path/'pool.safetensors'), pool)


@pytest.mark.parametrize("fail_on", ["first_shard", "meta", "index"])
def test_crash_during_disk_refresh_leaves_the_previous_pool(tmp_path, monkeypatch, fail_on):
    gen, clf = FakeGenerator(), make_classifier()
    root = tmp_path/'pool'
    pool = Pool.generate(gen, balanced(100), Sampling(), seed=0, shard_size=128, root=root)
    pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=1)
    before = Pool.from_state_dict(pool.state_dict())
    files_before = pool_files(root)
    match = {'first_shard': lambda d, n: d.name.startswith('shard'), 'meta': lambda d, n: d.name.startswith('meta'),
             'index': lambda d, n: d.name == INDEX}[fail_on]
    crashing_replace(monkeypatch, match)
    with pytest.raises(OSError, match="simulated crash"): pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=2)
    monkeypatch.undo()
    assert not [f for f in os.listdir(root) if '.tmp' in f]             # no temp files
    assert_same(pool, before)                                           # in memory: unchanged
    assert_same(Pool.load(root), before)                                # on disk: the previous pool, loadable
    assert set(files_before) <= set(pool_files(root))
    pool.refresh(gen, clf, 0.5, Sampling(omega=0.05), seed=2)                                 # the next write succeeds and cleans orphans
    index = read_index(root)
    prev_generation = set(files_before) - {INDEX}
    assert set(pool_files(root)) <= set(index['shards']) | {index['meta'], INDEX} | prev_generation

"Trainer tests that are not documentation: the bad-config table, schedule sweeps, and resume == uninterrupted on the real digits parts."
import math, json
import pytest
import torch
from deliberate_practice.trainer import DPConfig, DPTrainer, wsd_lr, cosine_lr, in_decay_phase, preset

# (field, bad value, what the message must contain) -- every message names the field and shows the value
BAD = [
    ('pool_size', 0, 'pool_size must be >= 1, got 0'),
    ('pool_size', 2.5, 'pool_size must be an integer, got 2.5'),
    ('prune_frac', 1.5, 'prune_frac must be in [0, 1], got 1.5'),
    ('prune_frac', -0.1, 'prune_frac must be in [0, 1], got -0.1'),
    ('patience', 0, 'patience must be >= 1, got 0'),
    ('patience_growth', -1, 'patience_growth must be >= 0, got -1'),
    ('selection', 'hardest', "selection must be one of ('easiest', 'random', 'none'), got 'hardest'"),
    ('score_metric', 'confidence', "score_metric must be one of"),
    ('grow', 'yes', "grow must be True or False, got 'yes'"),
    ('omega', -0.1, 'omega must be >= 0, got -0.1'),
    ('omega', float('nan'), 'omega must be a finite number, got nan'),
    ('cfg_scale', -1.0, 'cfg_scale must be >= 0, got -1.0'),
    ('cfg_scale_init', 'two', "cfg_scale_init must be a finite number, got 'two'"),
    ('n_steps', 0, 'n_steps must be in [1, 1000], got 0'),
    ('n_steps', 5000, 'n_steps must be in [1, 1000], got 5000'),
    ('guide_every', 0, 'guide_every must be >= 1, got 0'),
    ('gen_batch_size', 0, 'gen_batch_size must be >= 1 or None, got 0'),
    ('image_size', 0, 'image_size must be >= 1 or None, got 0'),
    ('image_size', 224, "image_size must be None or 8 for dataset 'digits', got 224"),
    ('epochs', 0, 'epochs must be >= 1, got 0'),
    ('epochs', True, 'epochs must be an integer, got True'),
    ('lr', 0.0, 'lr must be > 0, got 0.0'),
    ('lr', float('inf'), 'lr must be a finite number, got inf'),
    ('weight_decay', -0.05, 'weight_decay must be >= 0, got -0.05'),
    ('batch_size', 0, 'batch_size must be >= 1, got 0'),
    ('scheduler', 'step', "scheduler must be one of ('wsd', 'cosine'), got 'step'"),
    ('warmup_frac', 1.0, 'warmup_frac must be in [0, 1), got 1.0'),
    ('decay_frac', 0.95, 'decay_frac must be in [0, 1 - warmup_frac = 0.9], got 0.95'),
    ('label_smoothing', 1.0, 'label_smoothing must be in [0, 1), got 1.0'),
    ('mixup', -0.2, 'mixup must be >= 0, got -0.2'),
    ('cutmix', -1.0, 'cutmix must be >= 0, got -1.0'),
    ('ema_decay', 1.0, 'ema_decay must be in [0, 1), got 1.0'),
    ('model', '', "model must be a non-empty string, got ''"),
    ('dataset', 'cifar10', "dataset must be one of"),
    ('device', 'gpu0', "device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu0'"),
    ('seed', -1, 'seed must be >= 0, got -1'),
    ('data_root', 3, 'data_root must be a non-empty string, got 3'),
    ('guidance_batch_size', 0, 'guidance_batch_size must be >= 1 or None, got 0'),
    ('mixed_precision', 'fp8', "mixed_precision must be one of ('no', 'bf16', 'fp16'), got 'fp8'"),
    ('mixed_precision', 'fp16', "mixed_precision must be 'no' or 'bf16' off CUDA ('fp16' needs a CUDA device), got 'fp16'"),
    ('num_workers', -1, 'num_workers must be >= 0, got -1'),
    ('test_every', -1, 'test_every must be >= 0, got -1'),
    ('gradient_checkpointing', 1, 'gradient_checkpointing must be True or False, got 1'),
]

@pytest.mark.parametrize('field,value,msg', BAD, ids=[f'{f}={v!r}' for f, v, _ in BAD])
def test_bad_config_refused(field, value, msg):
    with pytest.raises(ValueError) as e: DPConfig(**{field: value})
    assert msg in str(e.value)

def test_bad_combinations_refused():
    with pytest.raises(ValueError, match='batch_size must be even when mixup/cutmix is on'): DPConfig(mixup=0.8, batch_size=63)
    with pytest.raises(ValueError, match="data_root must be set for dataset 'imagenet100', got None"): DPConfig(dataset='imagenet100')
    with pytest.raises(ValueError, match='preset must be one of'): preset('cifar')

def test_config_roundtrip_and_presets():
    for c in (DPConfig(), preset('imagenet1k', data_root='/d', sd_path='/sd', gen_batch_size=None)):
        assert DPConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c

@pytest.mark.parametrize('total', [7, 10, 100, 937, 6000])
@pytest.mark.parametrize('sched', [wsd_lr, cosine_lr])
def test_schedule_shape(total, sched):
    lrs = [sched(t, total, 0.1, 0.2) for t in range(total + 1)]
    w = round(0.1 * total)
    assert all(0 <= v <= 1 for v in lrs) and lrs[-1] == 0.0
    assert all(a < b for a, b in zip(lrs[:w], lrs[1:w]))                     # warmup strictly rises ...
    if w: assert lrs[w - 1] == 1.0                                           # ... to the peak
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))                 # then never rises
    if sched is wsd_lr:
        s = total - round(0.2 * total)
        assert all(v == 1.0 for v in lrs[w:s]) and (s == total or lrs[s] == 1.0)   # stable phase, cool-down starts at 1
        if s + 1 < total: assert lrs[s + 1] < 1.0

def test_decay_phase_matches_schedule():
    "No refresh is allowed once an epoch holds a cool-down step of the WSD schedule."
    epochs, spe = 60, 8
    for e in range(epochs):
        decays = any(wsd_lr(t, epochs * spe) < 1 for t in range(e * spe, (e + 1) * spe) if t >= epochs * spe * 0.1)
        assert in_decay_phase(e, epochs, 0.2) == decays, e

# ----- runs on the real digits parts (shipped generator, digits_splits, digits_cnn), tiny sizes -----
TINY = dict(pool_size=40, n_steps=4, patience=1, batch_size=16)
strip = lambda h: [{k: v for k, v in r.items() if k != 'wall_s'} for r in h]

pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module

@pytest.fixture(scope='module')
def parts():
    from deliberate_practice.generators import load_digits_generator
    from deliberate_practice.data import digits_splits
    return dict(generator=load_digits_generator(), data=digits_splits())

@pytest.mark.parametrize('extra', [dict(), dict(ema_decay=0.9, mixup=0.4, cutmix=0.5, label_smoothing=0.1, grow=True, patience_growth=1)],
                         ids=['dp', 'ema-mixup-grow'])
def test_resume_equals_uninterrupted(parts, tmp_path, extra):
    cfg = DPConfig(**TINY, epochs=6, **extra)
    ref, a = DPTrainer(cfg, **parts), DPTrainer(cfg, out=tmp_path, **parts)
    ref.best_val = a.best_val = 0.95                             # so patience (1) runs out now and then: refreshes on both sides of the resume
    ref_final = ref.fit()
    assert 1 <= ref.n_refreshes
    a.fit(stop_after=3)
    torch.manual_seed(123); torch.rand(7)                        # whatever ran in between must not matter
    b = DPTrainer.resume(tmp_path, **parts)
    assert b.epoch == 3
    b_final = b.fit()
    assert strip(b.history) == strip(ref.history)
    assert b_final == ref_final
    assert all(torch.equal(p, q) for p, q in zip(ref.model.state_dict().values(), b.model.state_dict().values()))
    assert strip(json.loads(l) for l in (tmp_path / 'history.jsonl').read_text().splitlines()) == strip(ref.history)

def test_static_pool_never_refreshes(parts):
    t = DPTrainer(DPConfig(**TINY, epochs=4, selection='none'), **parts)
    t.best_val = 2.0                                             # patience runs out every epoch, but the pool is static
    res = t.fit()
    assert res['refreshes'] == 0 and res['n_generated'] == 40
    assert all(r['n_generated'] == 40 for r in t.history)

def test_no_refresh_in_decay_phase(parts):
    "patience 1 with a val accuracy that never improves: a refresh after every epoch except those followed by the decay phase."
    t = DPTrainer(DPConfig(**TINY, epochs=8, decay_frac=0.3), **parts)
    t.best_val = 2.0                                             # unreachable: patience runs out every epoch
    t.fit()
    assert [r['refreshes'] for r in t.history] == [1, 2, 3, 4, 4, 4, 4, 4]   # none after epoch 5: epochs 6-8 hold cool-down steps
    assert t.history[-1]['n_generated'] == 40 * 5

class StubPool:
    "Stands in for the pool in `refresh`: records the call, changes nothing."
    def __init__(self): self.calls = []
    def refresh(self, *a, **kw): self.calls.append(kw); return {}

def test_patience_resets_on_improvement_and_on_refresh(parts):
    t = DPTrainer(DPConfig(**{**TINY, "patience": 2}, patience_growth=1, guidance_batch_size=3), **parts)
    assert [t.patience_step(v) for v in (0.5, 0.4, 0.6, 0.6)] == [False, False, False, False]   # 0.6 improved: the count restarted
    assert t.wait == 1 and t.patience_step(0.6) and t.wait == 2                                   # two epochs without improvement: due
    t.pool = StubPool()
    t.refresh()
    assert (t.wait, t.n_refreshes, t.cur_patience) == (0, 1, 3)                                  # a refresh restarts the count and grows patience
    assert not t.patience_step(0.6) and t.wait == 1
    assert t.pool.calls[0]['sampling'].guidance_batch_size == 3                    # the memory bound reaches the generator

def test_test_split_every_k_epochs_and_at_the_end(parts):
    seen = []
    class Counting(DPTrainer):
        def evaluate(self, data): seen.append(self.epoch + 1); return super().evaluate(data)
    for every, tested in ((0, [5]), (2, [2, 4, 5]), (1, [1, 2, 3, 4, 5])):
        t = Counting(DPConfig(**TINY, epochs=5, selection='none', test_every=every), **parts)
        seen.clear(); res = t.fit()
        assert [r['epoch'] for r in t.history if r['test_acc'] is not None] == tested
        assert len(seen) == 5 + len(tested)                                                     # val every epoch, test as due
        assert res['test_acc'] == t.history[-1]['test_acc'] is not None

def test_dataset_split_through_loader_equals_tensors(parts):
    "A Dataset split (read by DataLoader workers, sharded by accelerate) scores the same as the same images as tensors."
    from torch.utils.data import TensorDataset
    t = DPTrainer(DPConfig(**TINY, num_workers=2), **parts)
    x, y = parts['data']['test']
    assert t.evaluate(TensorDataset(x, y)) == t.evaluate((x, y))

def test_bf16_mixed_precision_trains_in_bf16(parts):
    "mixed_precision='bf16' runs the training forward pass under autocast (accelerate), through accelerator.backward."
    t = DPTrainer(DPConfig(**TINY, epochs=1, selection='none', mixed_precision='bf16'), **parts)
    dtypes = []
    h = t.model.model.features[0][0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    res = t.fit(); h.remove()
    assert t.acc.mixed_precision == 'bf16' and torch.bfloat16 in dtypes
    assert math.isfinite(t.history[-1]['pool_entropy']) and 0 <= res['test_acc'] <= 1
    fp32 = DPTrainer(DPConfig(**TINY, epochs=1, selection='none'), **parts)                     # the next run in this process: fp32 again
    dtypes.clear(); h = fp32.model.model.features[0][0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fp32.fit(); h.remove()
    assert set(dtypes) == {torch.float32}


def test_resume_a_checkpoint_from_before_a_new_field(parts, tmp_path):
    "A run checkpointed by a version without a field added since (here `variant`) resumes, the field at its default; a real difference is still refused."
    from deliberate_practice.runfolder import read_checkpoint
    DPTrainer(DPConfig(**TINY, epochs=3), out=tmp_path, **parts).fit(stop_after=1)
    sd = read_checkpoint(tmp_path / 'checkpoint.pt'); del sd['config']['variant']
    torch.save(sd, tmp_path / 'checkpoint.pt')
    b = DPTrainer.resume(tmp_path, **parts)
    assert b.epoch == 1 and b.cfg.variant is None
    b.fit(); assert b.epoch == 3 and len(b.history) == 3
    sd['config']['omega'] = 0.7
    with pytest.raises(ValueError, match='its config differs'): DPTrainer(DPConfig(**TINY, epochs=3), out=None, **parts).load_state_dict(sd)

"""Explorer tests that do not belong in the docs: building with a custom generator, the controls' wiring, the pool button, bad arguments."""
import math
from types import SimpleNamespace

import pytest
import torch

from deliberate_practice.config import Sampling
from deliberate_practice.explorer import ALL_CLASSES, CONTROLS, Explorer, explore, plot_entropy_hist, plot_samples, refresh_entropies
from deliberate_practice.guidance import entropy


class PrototypeGenerator:
    """Follows the generator contract on 4x4 images: class k is a bright pixel k on a dark image, and `omega` blends every image
    toward flat grey, so `PrototypeClassifier`'s entropy rises monotonically with `omega` (to log 3 at omega 1)."""
    class_names, image_shape = ['a', 'b', 'c'], (1, 4, 4)
    n_classes = 3

    def __init__(self): self.calls = []

    def sample(self, labels, sampling=Sampling(), classifier=None, seed=0, progress=False, return_stats=False):
        labels, omega = torch.as_tensor(labels).long(), sampling.omega
        self.calls.append(dict(labels=labels.clone(), cfg_scale=sampling.cfg_scale, omega=omega, n_steps=sampling.n_steps,
                               seed=seed, classifier=classifier))
        x = torch.zeros(len(labels), 16)
        x[torch.arange(len(labels)), labels] = 1.0
        noise = 0.02 * torch.rand(len(labels), 16, generator=torch.Generator().manual_seed(seed))
        x = ((1 - omega) * x + omega * 0.5 + noise).clamp(0, 1).view(-1, *self.image_shape)
        return (x, SimpleNamespace(n_nonfinite=0)) if return_stats else x


class PrototypeClassifier(torch.nn.Module):
    "logit_k = 10 * pixel k: sure of a clean prototype, unsure of a grey image."
    def forward(self, x): return 10 * x.flatten(1)[:, :3]


@pytest.fixture
def ex():
    return explore(PrototypeGenerator(), PrototypeClassifier(), n_images=6, pool_size=12, omega=0.0)


def test_builds_with_custom_generator(ex):
    assert isinstance(ex, Explorer) and hasattr(ex, 'children')           # an ipywidgets VBox
    assert [w.description for w in ex.controls.values()] == list(CONTROLS) == ['class', 'seed', 'omega', 'cfg_scale', 'n_steps']
    assert ex.controls['class'].options == (ALL_CLASSES, 'a', 'b', 'c')
    c = ex.controls
    assert (c['omega'].min, c['omega'].max, c['cfg_scale'].min, c['cfg_scale'].max, c['n_steps'].min, c['n_steps'].max) == (0, 1, 0, 6, 2, 50)
    assert ex.result['labels'].tolist() == [0, 1, 2, 0, 1, 2]            # all classes in turn
    assert ex.result['pred'].tolist() == [0, 1, 2, 0, 1, 2]
    assert len(ex.generator.calls) == 1                                   # one generation at construction, none more


def test_lazy_generates_nothing():
    gen = PrototypeGenerator()
    ex = explore(gen, PrototypeClassifier(), lazy=True)
    assert ex.result is None and gen.calls == []


def test_moving_omega_regenerates_with_higher_entropy(ex):
    gen, h = ex.generator, {}
    for w in (0.0, 0.5, 0.9):
        ex.controls['omega'].value = w                                    # what the slider does
        assert gen.calls[-1]['omega'] == w and gen.calls[-1]['classifier'] is ex.classifier
        h[w] = ex.result['entropy'].mean().item()
    assert h[0.0] < h[0.5] < h[0.9] < math.log(3)
    torch.testing.assert_close(ex.result['entropy'], entropy(ex.classifier(ex.result['images'])))


def test_every_control_reaches_the_generator(ex):
    gen = ex.generator
    ex.controls['class'].value = 'c'
    assert gen.calls[-1]['labels'].tolist() == [2] * 6
    ex.controls['seed'].value = 7;       assert gen.calls[-1]['seed'] == 7
    ex.controls['cfg_scale'].value = 3.5; assert gen.calls[-1]['cfg_scale'] == 3.5
    ex.controls['n_steps'].value = 5;    assert gen.calls[-1]['n_steps'] == 5


def test_update_sets_controls_and_generates_once(ex):
    n = len(ex.generator.calls)
    r = ex.update(omega=0.4, seed=3, n_steps=10)
    assert len(ex.generator.calls) == n + 1                              # not once per control set
    assert ex.settings == {'class': ALL_CLASSES, 'seed': 3, 'omega': 0.4, 'cfg_scale': 2.0, 'n_steps': 10}
    assert {k: ex.generator.calls[-1][k] for k in ('omega', 'seed', 'n_steps')} == {'omega': 0.4, 'seed': 3, 'n_steps': 10}
    assert r is ex.result
    with pytest.raises(ValueError, match='controls'): ex.update(omgea=0.3)


def test_callback_errors_go_to_the_status_line(ex):
    def boom(*a, **k): raise RuntimeError("generator crashed")
    ex.generator.sample = boom
    ex.controls['omega'].value = 0.2                                      # no exception escapes the callback
    assert 'RuntimeError' in ex.status.value and 'generator crashed' in ex.status.value


def test_refresh_pool(ex):
    r = ex.refresh_pool(omega=0.8)
    assert len(r['before']) == len(r['after']) == 12 and r['info']['n_new'] == 6
    assert r['after'].mean() > r['before'].mean()
    assert ex.pool_result is r
    n = len(ex.generator.calls)
    ex.refresh_pool(omega=0.3)                                            # same cfg_scale/n_steps/seed: the initial pool is reused
    assert len(ex.generator.calls) == n + 1 and ex.generator.calls[-1]['omega'] == 0.3
    ex.refresh_button.click()                                             # the button runs the same
    assert len(ex.generator.calls) == n + 2 and 'pool mean entropy' in ex.status.value


def test_refresh_entropies_prunes_the_easiest():
    gen, clf = PrototypeGenerator(), PrototypeClassifier()
    r = refresh_entropies(gen, clf, pool_size=9, prune_frac=1 / 3, omega=0.7, seed=0)
    kept = torch.ones(9, dtype=torch.bool); kept[r['info']['pruned_indices']] = False
    assert kept.sum() == 6 and torch.equal(r['after'][kept], r['before'][kept])
    assert len(r['pool']) == 9 and r['pool'].round == 0                   # the initial pool is not modified


def test_plots_return_figures():
    imgs, logits = torch.rand(7, 3, 6, 6), torch.randn(7, 4)
    fig = plot_samples(imgs, logits, torch.arange(7) % 4, list('wxyz'), ncols=3, title='t')
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 7 and titles[0] == f"{'wxyz'[int(logits[0].argmax())]}  H={entropy(logits)[0]:.2f}"
    fig = plot_entropy_hist(torch.rand(20), torch.rand(20) + 0.5, n_classes=4)
    assert fig.axes[0].get_xlim() == (0, pytest.approx(math.log(4)))


@pytest.mark.parametrize('kw, field', [
    (dict(n_images=0), 'n_images'), (dict(n_images=2.5), 'n_images'), (dict(pool_size=0), 'pool_size'), (dict(ncols=-1), 'ncols'),
    (dict(prune_frac=0), 'prune_frac'), (dict(prune_frac=1.5), 'prune_frac'), (dict(omega=-0.1), 'omega'), (dict(omega=2), 'omega'),
    (dict(cfg_scale=7), 'cfg_scale'), (dict(n_steps=1), 'n_steps'), (dict(n_steps=60), 'n_steps'),
    (dict(n_images='many'), 'n_images'), (dict(seed=-1), 'seed'), (dict(omega='x'), 'omega'),
    (dict(generator=object()), 'generator'), (dict(classifier=None), 'classifier'), (dict(classifier=3), 'classifier'),
])
def test_bad_arguments(kw, field):
    kw = {'generator': PrototypeGenerator(), 'classifier': PrototypeClassifier(), **kw}
    with pytest.raises(ValueError, match=field): explore(**kw)


def test_defaults_digits():
    "`explore()` with no arguments: the shipped digits generator and the reference classifier."
    ex = explore(n_images=4, omega=0.0)
    assert ex.controls['class'].options == (ALL_CLASSES, *[str(i) for i in range(10)])
    assert ex.result['images'].shape == (4, 1, 8, 8)
    h0 = ex.result['entropy'].mean()
    ex.controls['omega'].value = 0.5
    assert ex.result['entropy'].mean() > h0

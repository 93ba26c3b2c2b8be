"Sampler behaviour that does not belong in the docs: guards, options, bad input."
import dataclasses, math, re
import pytest
import torch
from deliberate_practice.config import Sampling
from deliberate_practice.ddim import alpha_bars
from deliberate_practice.guidance import entropy, entropy_grad, guided_ddim_sample

AB = alpha_bars(schedule='squaredcos_cap_v2')
PROTO = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))

def denoise(x, t):  # a fixed toy (uncond, cond) pair
    return torch.tanh(x), torch.tanh(x + PROTO * (t / 1000))

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.fc = torch.nn.Linear(16, 3)
    def forward(self, x): return self.fc(x.flatten(1))

def x_T(seed=1): return torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(seed))

def test_omega_raises_entropy_and_stays_finite():
    clf = Linear()
    H = [entropy(clf(guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=w, n_steps=10), classifier=clf)[0])).mean().item()
         for w in (0, 0.3)]
    assert H[1] > H[0]

def test_nonfinite_gradient_is_dropped_and_counted():
    class NaNFirst(Linear):
        def forward(self, x):
            out = super().forward(x)
            return torch.cat([out[:1] * float('nan'), out[1:]])
    x0, stats = guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.5, n_steps=10), classifier=NaNFirst())
    assert torch.isfinite(x0).all()
    assert stats.n_nonfinite == 10            # sample 0, every guided step
    ref, _ = guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.0, n_steps=10))
    assert torch.allclose(x0[0], ref[0], atol=1e-6)   # the poisoned sample fell back to plain CFG

class Unchecked(Sampling):
    "A `Sampling` that skips its checks, to reach the sampler's guards with values `Sampling` refuses."
    def __post_init__(self): pass

def test_nonfinite_step_is_redone_unguided():
    x0, stats = guided_ddim_sample(denoise, x_T(), AB, Unchecked(omega=float('inf'), n_steps=5),
                                   classifier=Linear())
    assert torch.isfinite(x0).all() and stats.n_nonfinite > 0

def test_guide_every_and_until_count_steps():
    clf = Linear()
    assert guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.1, n_steps=30, guide_every=5),
                              classifier=clf)[1].n_guided_steps == 6
    assert guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.1, n_steps=20, guide_until=0.5),
                              classifier=clf)[1].n_guided_steps == 10

def test_through_denoiser_equals_detached_when_eps_is_constant():
    const = lambda x, t: (PROTO + 0 * x, PROTO + 0 * x)   # eps independent of x_t
    clf = Linear()
    a, _ = guided_ddim_sample(const, x_T(), AB, Sampling(omega=0.2, n_steps=8), classifier=clf)
    b, _ = guided_ddim_sample(const, x_T(), AB, Sampling(omega=0.2, n_steps=8, grad_through_denoiser=True),
                              classifier=clf)
    assert torch.allclose(a, b, atol=1e-5)
    c, _ = guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.2, n_steps=8, grad_through_denoiser=True),
                              classifier=clf)
    assert not torch.allclose(a, c, atol=1e-3)

def test_classifier_mode_and_grads_untouched():
    clf = Linear().train()
    guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.1, n_steps=4), classifier=clf)
    assert clf.training and all(p.grad is None for p in clf.parameters())

def test_eta_uses_the_generator():
    run = lambda s: guided_ddim_sample(denoise, x_T(), AB, Sampling(n_steps=6, eta=1.0),
                                       generator=torch.Generator().manual_seed(s))[0]
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))

@pytest.mark.parametrize('kw,message', [
    (dict(omega=-0.1), "omega must be a finite number in [0, 100.0], got -0.1"),
    (dict(omega=0.1, guide_every=0), "guide_every must be an integer in [1, 1000], got 0"),
    (dict(omega=0.1, guide_until=1.5), "guide_until must be a finite number in [0, 1], got 1.5"),
    (dict(omega=0.1, grad_norm='l2'), "grad_norm must be one of ('rms', 'none'), got 'l2'"),
    (dict(omega=0.1, guidance_form='x0'), "guidance_form must be one of ('eps', 'fgds'), got 'x0'"),
    (dict(guidance_form=None), "guidance_form must be one of ('eps', 'fgds'), got None"),
    *[(dict(omega=0.1, guidance_batch_size=b), f"guidance_batch_size must be an integer in [1, 1000000], got {b!r}")
      for b in (0, -2, 1.5, True, '2')],
    (dict(n_steps=2000), "n_steps must be an integer in [1, 1000], got 2000")])
def test_bad_sampling(kw, message):
    "Bad sampling options are refused when the `Sampling` is built, before any sampler runs."
    kw = {'n_steps': 5, **kw}
    with pytest.raises(ValueError, match=re.escape(message)): Sampling(**kw)

@pytest.mark.parametrize('sampling,kw,field', [
    (Sampling(n_steps=5, omega=0.1), {}, 'classifier'), (Sampling(n_steps=5), dict(spacing='random'), 'spacing'),
    (10, {}, 'sampling must be a config.Sampling')])   # the old positional n_steps
def test_bad_input(sampling, kw, field):
    with pytest.raises(ValueError, match=field): guided_ddim_sample(denoise, x_T(), AB, sampling, **kw)

def test_eval_mode_restores_every_submodule():
    from deliberate_practice.guidance import eval_mode
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    m[1].eval()                                    # a submodule deliberately frozen in eval mode
    with eval_mode(m): assert not any(x.training for x in m.modules())
    assert m.training and m[0].training and not m[1].training


@pytest.mark.parametrize('through,form', [(False, 'eps'), (True, 'eps'), (False, 'fgds')])
def test_guidance_batch_size_gives_the_same_samples(through, form):
    "In float64 the chunked gradient is the whole-batch one to 1e-12, with eps detached or through the denoiser (float32 differs in the last bits only)."
    proto = PROTO.double()
    den = lambda x, t: (torch.tanh(x), torch.tanh(x + proto * (t / 1000)))
    clf = Linear().double()
    S = Sampling(n_steps=8, cfg_scale=3.0, omega=0.5 if form == 'eps' else 0.05, grad_through_denoiser=through,
                 guidance_form=form)
    full, st = guided_ddim_sample(den, x_T().double(), AB, S, classifier=clf)
    for b in (1, 3, 4, 9):                                          # 4 images: chunks of 1, 3 + 1, one chunk, more than the batch
        out, st_b = guided_ddim_sample(den, x_T().double(), AB, dataclasses.replace(S, guidance_batch_size=b),
                                       classifier=clf)
        assert (out - full).abs().max() <= 1e-12 and st_b.grad_norms == pytest.approx(st.grad_norms, rel=1e-12)
    plain = guided_ddim_sample(den, x_T().double(), AB, Sampling(cfg_scale=3.0, n_steps=8))[0]
    assert (full - plain).abs().max() > 0.1   # the guidance did act

def test_guidance_batch_size_bounds_the_backward_pass():
    "The classifier never sees more than guidance_batch_size images while the gradient is taken."
    seen = []
    class Spy(Linear):
        def forward(self, x): seen.append(len(x)); return super().forward(x)
    guided_ddim_sample(denoise, x_T(), AB, Sampling(omega=0.1, n_steps=3, guidance_batch_size=3),
                       classifier=Spy())
    assert seen == [3, 1] * 3


# ---- the FGDS form (guidance_form='fgds') ---------------------------------------------------------------------------

def _fgds_toy():
    "A linear (uncond, cond) denoiser and a linear classifier in float64, a 10-step toy schedule, 3 starting samples."
    g = torch.Generator().manual_seed(0)
    A, B, b = (torch.randn(4, 4, generator=g, dtype=torch.float64) / 2 for _ in range(3))
    den = lambda x, t: ((x.flatten(1) @ A).view_as(x), (x.flatten(1) @ B + b[0]).view_as(x))
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    clf = lambda x: x.flatten(1) @ W
    return den, clf, torch.linspace(0.99, 0.3, 10, dtype=torch.float64), torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)

def _fgds_step_by_hand(den, clf, x_t, a_t, a_prev, omega, cfg_scale, x_norm=True, through=True, eps_at_moved=False):
    "One FGDS step from its definition with autograd; the keyword switches give the wrong variants the test must tell apart."
    x = x_t.clone().requires_grad_(True)
    u, c = den(x, 9)
    eps = u + cfg_scale * (c - u)
    x0_hat = (x - (1 - a_t) ** 0.5 * (eps if through else eps.detach())) / a_t ** 0.5
    p = clf(x0_hat).softmax(-1)
    g, = torch.autograd.grad(-(p * p.log()).sum(), x)
    per = lambda v: v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    moved = x_t + omega * (per(x_t) if x_norm else 1) * g / per(g)
    if eps_at_moved: u, c = den(moved, 9); eps = u + cfg_scale * (c - u)
    eps = eps.detach()
    return a_prev ** 0.5 * (moved - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5 + (1 - a_prev) ** 0.5 * eps

def test_fgds_one_step_equals_the_hand_computation():
    den, clf, ab, x = _fgds_toy()
    S = Sampling(cfg_scale=2.0, omega=0.05, n_steps=1)
    kw = dict(spacing='trailing', final_alpha_bar=0.8, classifier=clf)   # t = 9: 0.3 -> 0.8
    ours, st = guided_ddim_sample(den, x, ab, dataclasses.replace(S, guidance_form='fgds'), **kw)
    want = _fgds_step_by_hand(den, clf, x, 0.3, 0.8, 0.05, 2.0)
    assert (ours - want).abs().max() < 1e-12 and st.n_guided_steps == 1 and st.n_nonfinite == 0
    for wrong in (dict(x_norm=False), dict(through=False), dict(eps_at_moved=True)):   # each mistake moves the result well beyond 1e-12
        assert (_fgds_step_by_hand(den, clf, x, 0.3, 0.8, 0.05, 2.0, **wrong) - want).abs().max() > 1e-4, wrong
    eps_form, _ = guided_ddim_sample(den, x, ab, dataclasses.replace(S, grad_through_denoiser=True), **kw)
    assert (eps_form - want).abs().max() > 1e-3                                       # not eq. 5's step

def test_fgds_two_steps_and_guide_every():
    "Two steps, the second unguided with guide_every=2: the hand step, then plain CFG DDIM."
    den, clf, ab, x = _fgds_toy()
    ours, st = guided_ddim_sample(den, x, ab,
                                  Sampling(cfg_scale=2.0, omega=0.1, n_steps=2, guide_every=2, guidance_form='fgds'),
                                  spacing='trailing', classifier=clf, final_alpha_bar=1.0)
    a_t, a_mid = ab[9].item(), ab[4].item()                                           # trailing: t = 9, then 4
    mid = _fgds_step_by_hand(den, clf, x, a_t, a_mid, 0.1, 2.0)
    u, c = den(mid, 4); eps = u + 2.0 * (c - u)
    assert (ours - (mid - (1 - a_mid) ** 0.5 * eps) / a_mid ** 0.5).abs().max() < 1e-12 and st.n_guided_steps == 1

def test_fgds_guards():
    "A non-finite gradient is dropped (that sample takes the plain step), a zero one moves nothing, and nothing turns NaN."
    den, clf, ab, x = _fgds_toy()
    S = Sampling(cfg_scale=2.0, omega=0.1, n_steps=3, guidance_form='fgds')
    plain, _ = guided_ddim_sample(den, x, ab, Sampling(cfg_scale=2.0, n_steps=3))
    nan_first = lambda v: torch.cat([clf(v[:1]) * float('nan'), clf(v[1:])])
    out, st = guided_ddim_sample(den, x, ab, S, classifier=nan_first)
    assert torch.isfinite(out).all() and st.n_nonfinite == 3 and torch.equal(out[0], plain[0]) and (out[1:] - plain[1:]).abs().max() > 1e-3
    flat, st = guided_ddim_sample(den, x, ab, S, classifier=lambda v: 0 * v.flatten(1)[:, :3])   # uniform: H = log 3, g = 0
    assert torch.equal(flat, plain) and st.n_nonfinite == 0

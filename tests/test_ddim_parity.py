"Parity sweep: our DDIM math equals diffusers' DDIMScheduler (clip_sample off) for every schedule x spacing x eta x prediction type."
import itertools
import pytest
import torch
from diffusers import DDIMScheduler
from deliberate_practice.ddim import alpha_bars, ddim_timesteps, alpha_bar_pairs, ddim_step, predict_x0, predict_eps

SCHEDULES = [('linear', 0.0001, 0.02), ('scaled_linear', 0.00085, 0.012), ('squaredcos_cap_v2', 0.0001, 0.02)]
SPACINGS = [('leading', 1), ('leading', 0), ('trailing', 0), ('linspace', 0)]
ETAS = [0.0, 0.5, 1.0]
PREDS = ['epsilon', 'v_prediction', 'sample']

def toy_model(x, t):
    "A fixed nonlinear function of (x, t) standing in for a denoiser."
    return torch.tanh(x * 0.7 + 0.1) * (0.2 + t / 1000)

@pytest.mark.parametrize('schedule,spacing,eta,pred', [
    (s, sp, e, p) for s, sp, e, p in itertools.product(SCHEDULES, SPACINGS, ETAS, PREDS)])
def test_ddim_loop_matches_diffusers(schedule, spacing, eta, pred):
    (name, b0, b1), (spacing, offset) = schedule, spacing
    n_steps = 20
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule=name, beta_start=b0, beta_end=b1, clip_sample=False,
                          set_alpha_to_one=True, steps_offset=offset, timestep_spacing=spacing, prediction_type=pred)
    sched.set_timesteps(n_steps)
    ab = alpha_bars(1000, name, b0, b1)
    assert torch.equal(ab, sched.alphas_cumprod)
    ts = ddim_timesteps(n_steps, 1000, spacing, offset)
    assert torch.equal(ts, sched.timesteps)
    g = torch.Generator().manual_seed(0)
    x_ours = x_ref = torch.randn(3, 2, 6, 6, generator=g)
    for t, a_t, a_prev in alpha_bar_pairs(ab, ts):
        noise = torch.randn(x_ours.shape, generator=g)
        out_ours, out_ref = toy_model(x_ours, t), toy_model(x_ref, t)
        x_ours = ddim_step(x_ours, out_ours, a_t, a_prev, eta=eta, noise=noise, prediction_type=pred)
        x_ref = sched.step(out_ref, t, x_ref, eta=eta, variance_noise=noise).prev_sample
        assert torch.allclose(x_ours, x_ref, atol=1e-5, rtol=1e-5), (t, (x_ours - x_ref).abs().max())

@pytest.mark.parametrize('pred', PREDS)
def test_x0_and_eps_match_diffusers(pred):
    sched = DDIMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012, clip_sample=False, prediction_type=pred)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = int(sched.timesteps[3])
    res = sched.step(out, t, x)
    a = alpha_bars()[t].item()
    assert torch.allclose(predict_x0(x, out, a, pred), res.pred_original_sample, atol=1e-5)

@pytest.mark.parametrize('call,field', [
    (lambda: alpha_bars(schedule='cosine'), 'schedule'),
    (lambda: alpha_bars(n_train_steps=0), 'n_train_steps'),
    (lambda: alpha_bars(schedule='linear', beta_start=0.5, beta_end=0.1), 'beta_start'),
    (lambda: ddim_timesteps(1001, 1000), 'n_steps'),
    (lambda: ddim_timesteps(0), 'n_steps'),
    (lambda: ddim_timesteps(10, spacing='uniform'), 'spacing'),
    (lambda: ddim_step(torch.zeros(1), torch.zeros(1), 0.5, 0.6, eta=-0.1), 'eta'),
    (lambda: ddim_step(torch.zeros(1), torch.zeros(1), 0.0, 0.6), 'alpha_bar'),
    (lambda: ddim_step(torch.zeros(1), torch.zeros(1), 0.5, 1.2), 'alpha_bar'),
    (lambda: predict_eps(torch.zeros(1), torch.zeros(1), 0.5, 'x0'), 'prediction_type'),
])
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=field): call()

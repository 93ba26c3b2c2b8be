"""Generators: seeding and batch-size invariance, label validation, the tiny Stable Diffusion pipeline end to end and against diffusers'
own pipeline, the guidance memory levers, weight files."""
import dataclasses, json, re, shutil
import pytest
import torch
from torch import nn
from deliberate_practice.config import Sampling
from deliberate_practice.data import digits_splits
from deliberate_practice.generators import (DIGITS_TRAINING, SD_SUBFOLDERS, StableDiffusionGenerator, check_labels, digits_unet,
                                            initial_noise, load_digits_generator, save_digits_unet, tiny_sd_components, tiny_taesd,
                                            train_digits_generator, DigitsGenerator, check_sd_folder)


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest: one torch thread for this module


@pytest.fixture(scope='module')
def gen(): return load_digits_generator()


def tiny_classifier(in_chans, n_classes, seed=0):
    "A small conv net as the entropy feedback (weights fixed by `seed`)."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(64, n_classes))


@pytest.fixture(scope='module')
def sd(): return StableDiffusionGenerator(**tiny_sd_components(seed=0), class_names=['tench', 'goldfish', 'shark'], classifier_size=12)


# ---- digits ---------------------------------------------------------------------------------------------------------

LABELS = torch.arange(10).repeat(3)

@pytest.mark.parametrize('omega', [0.0, 0.1])
def test_digits_batch_size_invariance(gen, omega):
    "Batching changes nothing but float round-off (which entropy guidance may amplify a little, never into another image)."
    clf = tiny_classifier(1, 10)
    ref, st = gen.sample(LABELS, Sampling(omega=omega, n_steps=8), classifier=clf, seed=3, return_stats=True)
    for bs in (1, 7):
        out, st_b = gen.sample(LABELS[:14] if bs == 1 else LABELS,
                               Sampling(omega=omega, n_steps=8, batch_size=bs), classifier=clf, seed=3,
                               return_stats=True)
        diff = (out - ref[:len(out)]).abs()
        assert diff.max() < (1e-5 if omega == 0 else 5e-3) and diff.mean() < 1e-5
        assert (st_b.n_steps, st_b.n_guided_steps) == (st.n_steps, st.n_guided_steps)
        if bs == 7: assert st_b.mean_grad_norm == pytest.approx(st.mean_grad_norm, rel=1e-4)
    assert st.n_guided_steps == (8 if omega else 0)


def test_digits_seed(gen):
    a = gen.sample(LABELS, Sampling(n_steps=10), seed=0)
    assert torch.equal(a, gen.sample(LABELS, Sampling(n_steps=10), seed=0))              # same seed: identical
    torch.testing.assert_close(a[:5], gen.sample(LABELS[:5], Sampling(n_steps=10), seed=0), atol=1e-5, rtol=0)  # prefix does not depend on the tail
    assert (a - gen.sample(LABELS, Sampling(n_steps=10), seed=1)).abs().mean() > 0.05     # another seed: other images
    assert a.shape == (30, 1, 8, 8) and a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1


def test_digits_label_changes_image(gen):
    "The same noise with another label gives another digit (the condition is used)."
    a, b = gen.sample([3] * 8, seed=0), gen.sample([8] * 8, seed=0)
    assert (a - b).abs().mean() > 0.05


def test_guidance_changes_images(gen):
    clf = tiny_classifier(1, 10)
    a = gen.sample(LABELS, Sampling(n_steps=10), seed=0)
    b = gen.sample(LABELS, Sampling(omega=1.0, n_steps=10), seed=0, classifier=clf)
    c = gen.sample(LABELS, Sampling(omega=1.0, n_steps=10, grad_through_denoiser=True), seed=0,
                   classifier=clf)
    assert (a - b).abs().mean() > 1e-3 and (a - c).abs().mean() > 1e-3 and (b - c).abs().mean() > 1e-4


@pytest.mark.parametrize('labels,match', [
    ([[0, 1]], '1-D'), (torch.zeros(2, 2, dtype=torch.long), '1-D'), ([0.5, 1.0], 'integer'),
    (torch.tensor([True, False]), 'integer'), ([10], r'\[0, 10\)'), ([-1, 3], r'\[0, 10\)')])
def test_label_validation(gen, labels, match):
    with pytest.raises(ValueError, match=match): gen.sample(labels)


@pytest.mark.parametrize('bs', [0, -2, 1.5])
def test_batch_size_validation(gen, bs):
    with pytest.raises(ValueError, match='batch_size'): gen.sample([1, 2], Sampling(batch_size=bs))


def test_empty_and_array_labels(gen):
    import numpy as np
    assert gen.sample([]).shape == (0, 1, 8, 8)
    out, st = gen.sample([], return_stats=True)
    assert st.n_guided_steps == 0
    assert torch.equal(gen.sample(np.array([1, 2]), Sampling(n_steps=5)), gen.sample(torch.tensor([1, 2]),
                                                                           Sampling(n_steps=5)))
    assert torch.equal(check_labels((4, 5), 10), torch.tensor([4, 5]))


def test_omega_needs_classifier(gen):
    with pytest.raises(ValueError, match='classifier'): gen.sample([1], Sampling(omega=0.1))


def test_null_label_must_be_extra_class():
    with pytest.raises(ValueError, match='null_label'): DigitsGenerator(digits_unet(), null_label=3)


def test_initial_noise_is_per_image():
    z = initial_noise(6, (2, 3), seed=9)
    assert torch.equal(z[2], torch.randn((2, 3), generator=torch.Generator().manual_seed(9 * 1_000_003 + 2)))


# ---- weights --------------------------------------------------------------------------------------------------------

def test_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='train_digits_generator'): load_digits_generator(path=tmp_path / 'digits_unet')


def test_save_load_roundtrip(tmp_path):
    x, y = digits_splits(seed=0)['gen']
    unet = train_digits_generator(x, y, n_steps=2, warmup=1, batch_size=8, progress=False)
    stem = save_digits_unet(unet, tmp_path / 'w', training=dict(DIGITS_TRAINING, n_steps=2))
    g2 = load_digits_generator(path=stem)
    for k, v in unet.state_dict().items(): assert torch.equal(g2.unet.state_dict()[k], v)
    assert torch.equal(DigitsGenerator(unet).sample([1, 2], Sampling(n_steps=3)), g2.sample([1, 2], Sampling(n_steps=3)))


def test_training_deterministic_and_validated():
    x, y = digits_splits(seed=0)['gen']
    kw = dict(n_steps=2, warmup=1, batch_size=8, progress=False)
    a, b = train_digits_generator(x, y, **kw), train_digits_generator(x, y, **kw)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()): assert torch.equal(v, w), k
    with pytest.raises(ValueError, match='y must'): train_digits_generator(x, y[:5], **kw)
    with pytest.raises(ValueError, match='p_uncond'): train_digits_generator(x, y, p_uncond=1.0, **kw)


# ---- tiny Stable Diffusion ------------------------------------------------------------------------------------------

def test_tiny_sd_end_to_end(sd):
    clf = tiny_classifier(3, 3)
    lab = [0, 2, 1]
    plain = sd.sample(lab, Sampling(n_steps=4), seed=0)
    guided, st = sd.sample(lab, Sampling(omega=1.0, n_steps=4), seed=0, classifier=clf, return_stats=True)
    assert guided.shape == (3, 3, 12, 12) and torch.isfinite(guided).all() and guided.min() >= 0 and guided.max() <= 1
    assert (st.n_guided_steps, st.n_nonfinite) == (4, 0) and st.mean_grad_norm > 0
    assert (guided - plain).abs().max() > 1e-3
    assert torch.equal(guided, sd.sample(lab, Sampling(omega=1.0, n_steps=4), seed=0, classifier=clf))       # deterministic
    torch.testing.assert_close(sd.sample(lab, Sampling(omega=1.0, n_steps=4, batch_size=2), seed=0,
                                         classifier=clf), guided, atol=1e-4, rtol=0)
    through = sd.sample(lab, Sampling(omega=1.0, n_steps=4, guide_every=2, grad_through_denoiser=True),
                        seed=0, classifier=clf)
    assert torch.isfinite(through).all() and (through - plain).abs().max() > 1e-3


def test_tiny_sd_classifier_sees_resized_decoded_images(sd):
    z = torch.randn(2, *sd.latent_shape, requires_grad=True)
    x = sd.decode(z)
    assert x.shape == (2, 3, 12, 12) and x.min() >= 0 and x.max() <= 1
    x.sum().backward()
    assert z.grad.abs().sum() > 0                       # differentiable through resize and VAE decoder


def test_tiny_sd_prompts(sd):
    "One embedding per class, and the class decides the image."
    assert sd.cond_emb.shape[0] == 3 and sd.uncond_emb.shape[0] == 1
    assert not torch.allclose(sd.cond_emb[0], sd.cond_emb[1])
    assert (sd.sample([0, 0], Sampling(n_steps=3), seed=0) - sd.sample([1, 1], Sampling(n_steps=3), seed=0)).abs().max() > 1e-4


def test_sd_from_pretrained_roundtrip(sd, tmp_path):
    sd.save_pretrained(tmp_path)
    sd2 = StableDiffusionGenerator.from_pretrained(tmp_path, sd.class_names, classifier_size=12)
    assert sd2.sampler_kw == sd.sampler_kw and sd2.image_shape == sd.image_shape
    assert torch.equal(sd2.sample([0, 1], Sampling(n_steps=3)), sd.sample([0, 1], Sampling(n_steps=3)))


def test_sd_from_pretrained_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='local_files_only'):
        StableDiffusionGenerator.from_pretrained(tmp_path / 'nothing', ['a'])
    with pytest.raises(FileNotFoundError, match='unet'):
        StableDiffusionGenerator.from_pretrained(tmp_path, ['a'])                          # exists, but not the layout


def test_sd_validation():
    comps = tiny_sd_components()
    with pytest.raises(ValueError, match='class_names'): StableDiffusionGenerator(**comps, class_names=[])
    with pytest.raises(ValueError, match='image_size'): StableDiffusionGenerator(**comps, class_names=['a'], image_size=15)
    comps['scheduler'] = comps['scheduler'].__class__.from_config(comps['scheduler'].config, clip_sample=True)
    with pytest.raises(ValueError, match='clip_sample'): StableDiffusionGenerator(**comps, class_names=['a'])

def test_first_index_gives_the_slice_of_a_larger_call():
    from deliberate_practice.generators import load_digits_generator
    g, labels = load_digits_generator(), torch.arange(8) % 10
    full = g.sample(labels, Sampling(n_steps=4), seed=3)
    torch.testing.assert_close(g.sample(labels[3:7], Sampling(n_steps=4), seed=3, first_index=3), full[3:7], atol=1e-5, rtol=0)


# ---- tiny Stable Diffusion against diffusers, and the guidance memory levers ---------------------------------------------

@pytest.mark.parametrize('cfg_scale', [1.5, 4.0])
def test_sd_matches_diffusers_pipeline(cfg_scale):
    """Unguided sampling is diffusers' StableDiffusionPipeline on the same (eval-mode) components, prompts and latents: exact here.
    Catches a swapped CFG pair, a wrong latent scaling and a missing [-1, 1] -> [0, 1] map."""
    from diffusers import StableDiffusionPipeline
    g = StableDiffusionGenerator(**tiny_sd_components(seed=0), class_names=['tench', 'goldfish', 'shark'])
    pipe = StableDiffusionPipeline(**{k: getattr(g, k) for k in SD_SUBFOLDERS}, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    lab = [0, 2, 1]
    ref = pipe([g.prompts[i] for i in lab], num_inference_steps=4, guidance_scale=cfg_scale, eta=0.0,
               latents=initial_noise(3, g.latent_shape, seed=2), output_type='pt').images
    ours = g.sample(lab, Sampling(cfg_scale=cfg_scale, n_steps=4), seed=2)
    assert ours.shape == ref.shape == (3, 3, 16, 16)
    assert (ours - ref).abs().max() <= 1e-6


class ToFloat64(nn.Module):
    def forward(self, x): return x.double()

def float64_classifier(in_chans, n_classes):
    "`tiny_classifier` in float64: its gradient does not depend on the batch size, so chunking is exact up to the decoder."
    return nn.Sequential(ToFloat64(), *tiny_classifier(in_chans, n_classes)).double()


@pytest.mark.parametrize('through', [False, True])
def test_guidance_batch_size_same_images(gen, sd, through):
    """Chunking changes no image beyond float32 round-off: every UNet pass runs guidance_batch_size images at a time (memory set by
    guidance_batch_size, not gen_batch_size), so the images differ by the round-off of its kernels (measured 1.2e-6); likewise the decoder's on tiny SD."""
    S = Sampling(omega=0.3, n_steps=4, grad_through_denoiser=through)
    clf = float64_classifier(1, 10)
    full = gen.sample(torch.arange(10), S, classifier=clf, seed=0)
    for b in (1, 3):
        chunked = gen.sample(torch.arange(10), dataclasses.replace(S, guidance_batch_size=b), classifier=clf, seed=0)
        assert (chunked - full).abs().max() <= 5e-6
    clf, lab = float64_classifier(3, 3), [0, 2, 1, 1, 0]
    full = sd.sample(lab, S, classifier=clf, seed=0)
    assert ((sd.sample(lab, dataclasses.replace(S, guidance_batch_size=2), classifier=clf, seed=0) - full).abs().max()
            <= (5e-6 if through else 1e-6))
    assert (full - sd.sample(lab, Sampling(n_steps=4), seed=0)).abs().max() > 1e-2          # the guidance did act


def test_gradient_checkpointing_same_images_and_recomputes():
    comps = lambda: tiny_sd_components(seed=0)
    plain = StableDiffusionGenerator(**comps(), class_names=['a', 'b'], classifier_size=12)
    ckpt = StableDiffusionGenerator(**comps(), class_names=['a', 'b'], classifier_size=12, gradient_checkpointing=True)
    runs = []
    ckpt.vae.decoder.up_blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    S, kw = Sampling(omega=1.0, n_steps=3), dict(classifier=tiny_classifier(3, 2), seed=0)
    assert torch.equal(ckpt.sample([0, 1, 1], S, **kw), plain.sample([0, 1, 1], S, **kw))
    assert len(runs) == 2 * 3 + 1                        # each guided step: forward, then again in the backward pass; then the final decode
    assert not plain.vae.decoder.gradient_checkpointing


def test_guidance_decoder_guides_but_does_not_decode(sd, tmp_path):
    taesd = tiny_taesd(seed=0)
    g = StableDiffusionGenerator(**tiny_sd_components(seed=0), class_names=sd.class_names, classifier_size=12, guidance_decoder=taesd)
    assert g.guidance_decoder is taesd and not taesd.training
    assert torch.equal(g.sample([0, 1], Sampling(n_steps=3)), sd.sample([0, 1], Sampling(n_steps=3)))                 # final images: the SD VAE's
    z = torch.randn(2, *sd.latent_shape, generator=torch.Generator().manual_seed(0))
    view = ((taesd.decode(z).sample + 1) / 2).clamp(0, 1)                                         # SD's scaled latents, straight in
    assert torch.allclose(g.guidance_view(z), torch.nn.functional.interpolate(view, size=(12, 12), mode='bilinear', antialias=True))
    S, kw = Sampling(omega=1.0, n_steps=3), dict(classifier=tiny_classifier(3, 3), seed=0)
    guided = g.sample([0, 1], S, **kw)
    assert (guided - sd.sample([0, 1], S, **kw)).abs().max() > 1e-3                                   # guided through another view
    taesd.save_pretrained(tmp_path / 'taesd')
    sd.save_pretrained(tmp_path / 'sd')
    g2 = StableDiffusionGenerator.from_pretrained(tmp_path / 'sd', sd.class_names, classifier_size=12, guidance_decoder=str(tmp_path / 'taesd'),
                                                  gradient_checkpointing=True)
    assert g2.guidance_decoder.decoder.gradient_checkpointing and not g2.vae.decoder.gradient_checkpointing
    assert torch.equal(g2.sample([0, 1], S, **kw), guided)


def test_guidance_decoder_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match='hf download madebyollin/taesd') as e:
        StableDiffusionGenerator(**tiny_sd_components(), class_names=['a'], guidance_decoder=str(tmp_path / 'no_taesd'))
    assert 'no_taesd' in str(e.value)
    with pytest.raises(ValueError, match='AutoencoderTiny'):
        StableDiffusionGenerator(**tiny_sd_components(), class_names=['a'], guidance_decoder=tiny_sd_components()['vae'])


def test_attention_untouched_unless_slicing_asked():
    "Default: diffusers' PyTorch 2 SDPA processors and no VAE slicing; slicing only on request."
    g = StableDiffusionGenerator(**tiny_sd_components(), class_names=['a'])
    assert {type(p).__name__ for p in g.unet.attn_processors.values()} == {'AttnProcessor2_0'} and not g.vae.use_slicing
    g = StableDiffusionGenerator(**tiny_sd_components(), class_names=['a'], attention_slicing='max')
    assert {type(p).__name__ for p in g.unet.attn_processors.values()} == {'SlicedAttnProcessor'} and g.vae.use_slicing


# ---- any Stable-Diffusion-family folder: SD-2.x v-prediction, diffusers' own layout, refusals -----------------------------

def test_v_prediction_matches_diffusers_pipeline():
    "A v-prediction model (SD-2.x 768 px) samples as StableDiffusionPipeline does, exactly; reading its output as epsilon would not."
    from diffusers import StableDiffusionPipeline
    g = StableDiffusionGenerator(**tiny_sd_components(seed=0, prediction_type='v_prediction'), class_names=['tench', 'goldfish', 'shark'])
    pipe = StableDiffusionPipeline(**{k: getattr(g, k) for k in SD_SUBFOLDERS}, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    lab = [2, 0, 1]
    ref = pipe([g.prompts[i] for i in lab], num_inference_steps=4, guidance_scale=3.0, eta=0.0,
               latents=initial_noise(3, g.latent_shape, seed=1), output_type='pt').images
    assert (g.sample(lab, Sampling(cfg_scale=3.0, n_steps=4), seed=1) - ref).abs().max() <= 1e-6
    eps = StableDiffusionGenerator(**tiny_sd_components(seed=0), class_names=['tench', 'goldfish', 'shark'])
    assert (eps.sample(lab, Sampling(cfg_scale=3.0, n_steps=4), seed=1) - ref).abs().max() > 1e-2


def test_saved_folder_opens_in_diffusers(sd, tmp_path):
    "save_pretrained writes diffusers' layout with model_index.json: StableDiffusionPipeline.from_pretrained opens it."
    from diffusers import StableDiffusionPipeline
    sd.save_pretrained(tmp_path)
    assert json.loads((tmp_path / 'model_index.json').read_text())['_class_name'] == 'StableDiffusionPipeline'
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert pipe.unet.config.sample_size == sd.unet.config.sample_size and pipe.scheduler.config.prediction_type == 'epsilon'


@pytest.mark.parametrize('change, message', [
    (lambda p: (p / 'text_encoder_2').mkdir(), 'is a Stable Diffusion XL folder'),
    (lambda p: (p / 'model_index.json').write_text('{"_class_name": "StableDiffusionXLPipeline"}'), 'StableDiffusionXLPipeline'),
    (lambda p: shutil.move(p / 'unet', p / 'transformer'), 'holds a transformer/ denoiser'),
    (lambda p: _edit_json(p / 'unet' / 'config.json', addition_embed_type='text_time'), "addition_embed_type 'text_time'"),
    (lambda p: _edit_json(p / 'unet' / 'config.json', in_channels=9), 'its UNet takes 9 input channels and its VAE makes 4-channel latents'),
])
def test_refuses_folders_it_cannot_drive(sd, tmp_path, change, message):
    sd.save_pretrained(tmp_path); change(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)): StableDiffusionGenerator.from_pretrained(tmp_path, ['a'])
    assert message in check_sd_folder(tmp_path)[1][0]


def _edit_json(f, **kw): f.write_text(json.dumps({**json.loads(f.read_text()), **kw}))


def test_prompts_per_class():
    g = StableDiffusionGenerator(**tiny_sd_components(), class_names=['owl', 'kite'], prompts=['an owl at night', 'a red kite'])
    assert g.prompts == ['an owl at night', 'a red kite']
    assert StableDiffusionGenerator(**tiny_sd_components(), class_names=['owl'], prompt_template='a {name} bird').prompts == ['a owl bird']
    with pytest.raises(ValueError, match='one prompt per class'): StableDiffusionGenerator(**tiny_sd_components(), class_names=['owl', 'kite'], prompts=['x'])


def test_prompts_used_in_turn():
    "Image k of class c takes prompts[c][k % len]: the image the one-prompt generator makes at that index, bit for bit."
    mk = lambda prompts: StableDiffusionGenerator(**tiny_sd_components(), class_names=['owl', 'kite'], prompts=prompts, classifier_size=12)
    turns = mk([['an owl', 'an owl at night', 'a snowy owl'], 'a red kite'])
    alone = [mk([p, 'a red kite']) for p in turns.prompts[0]]
    assert turns.prompts == [['an owl', 'an owl at night', 'a snowy owl'], 'a red kite'] and turns.cond_emb.shape[0] == 4
    lab = torch.tensor([0, 1, 0, 0, 0])
    for first in (0, 2, 7):
        S, kw = Sampling(n_steps=2), dict(seed=3, first_index=first)
        each = [g.sample(lab, S, **kw) for g in alone]
        want = torch.stack([each[(first + k) % 3 if lab[k] == 0 else 0][k] for k in range(len(lab))])
        assert torch.equal(turns.sample(lab, S, **kw), want)
        by_slices = torch.cat([turns.sample(lab[s:s + 2], S, seed=3, first_index=first + s) for s in (0, 2, 4)])
        assert torch.equal(turns.sample(lab, dataclasses.replace(S, batch_size=2), **kw), by_slices)    # batches and slices: each prompt follows its image's index
    assert (each[0][0] - each[1][0]).abs().max() > 1e-3


def test_str_prompts_unchanged_and_shared_prompts_encoded_once():
    g = StableDiffusionGenerator(**tiny_sd_components(), class_names=['a', 'b', 'c'], prompts=['x', ['y', 'x'], 'z'], classifier_size=12)
    assert g.prompt_rows == [[0], [1, 0], [2]] and g.cond_emb.shape[0] == 3
    one = StableDiffusionGenerator(**tiny_sd_components(), class_names=['a', 'b', 'c'], prompts=['x', 'y', 'z'], classifier_size=12)
    assert torch.equal(one.cond_emb, one.encode_prompts(['x', 'y', 'z']))                        # one str per class: today's table
    lab = torch.tensor([0, 1, 2, 1])
    assert torch.equal(g.sample(lab, Sampling(n_steps=2), seed=0)[[0, 2]], one.sample(lab, Sampling(n_steps=2), seed=0)[[0, 2]])


@pytest.mark.parametrize('bad', [[], [1], None, ['a', 2], 3])
def test_bad_prompt_entries(bad):
    with pytest.raises(ValueError, match=re.escape('prompts[0] must be a prompt or a non-empty list of prompts')):
        StableDiffusionGenerator(**tiny_sd_components(), class_names=['owl', 'kite'], prompts=[bad, 'a red kite'])


def test_fgds_form_backpropagates_through_the_unet(sd):
    "guidance_form='fgds' goes back through the UNet on each guided step (guide_every=5: 2 of 10), guidance_batch_size images at a time; the eps form never."
    clf, lab, calls = tiny_classifier(3, 3), torch.tensor([0, 1, 2, 1]), []
    hook = sd.unet.conv_in.register_full_backward_hook(lambda m, gi, go: calls.append(len(go[0])))
    try:
        S = Sampling(n_steps=10, guide_every=5, guidance_batch_size=3)
        kw = dict(seed=0, classifier=clf, return_stats=True)
        fgds, st = sd.sample(lab, dataclasses.replace(S, omega=0.03, guidance_form='fgds'), **kw)
        assert (calls, st.n_guided_steps, st.n_nonfinite) == ([6, 2] * 2, 2, 0)    # [cond, uncond] x (3 + 1) images: memory set by guidance_batch_size
        calls.clear(); sd.sample(lab, dataclasses.replace(S, omega=0.3), **kw)
        assert calls == []
    finally: hook.remove()
    whole = sd.sample(lab, dataclasses.replace(S, omega=0.03, guidance_form='fgds', guidance_batch_size=None), seed=0,
                      classifier=clf)
    torch.testing.assert_close(fgds, whole, atol=1e-4, rtol=0)                   # micro-batches: the same images
    assert torch.isfinite(fgds).all() and (fgds - sd.sample(lab, Sampling(n_steps=10), seed=0)).abs().max() > 1e-3

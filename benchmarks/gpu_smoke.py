"""GPU smoke test of the full-size path (issue 13): SD 1.5 in fp16 + ViT-B/16 at the preset batch sizes, under 5 minutes on one GPU.

Random weights: SD 1.5's published configs and ViT-B/16 as built by `full_size.py` (one source of truth), nothing downloaded.
Measured side by side in one run, through the package's objects (`StableDiffusionGenerator.sample`, `create_classifier`, `Pool`):
  - sampling: plain CFG, entropy-guided (omega 0.05) every step, every --guide-every steps (the preset's), and every step through
    a TAESD-shaped AutoencoderTiny view; --n-steps DDIM steps at --gen-batch-size images with --guidance-batch-size images per
    guidance backward; seconds extrapolated to a 50-step image (the final decode timed apart), images per second, ratio to plain,
    and peak GPU memory (torch.cuda.max_memory_allocated) against the CPU prediction in full_size_cpu.json when it is there;
  - training: one ViT-B/16 epoch on a random 1,024-image `Pool` (batch 256, bf16 autocast, AdamW): images per second, peak memory.
The guidance classifier runs in fp32, as the trainer's refresh runs its EMA model. Writes JSON (--out). Never asserts on time.
The batch-size defaults are the ImageNet presets' (00_config): gen_batch_size 64, guidance_batch_size 4, which with the FGDS form
(through the UNet) fit a 40 GB GPU by `dp-train --dry-run`'s estimate (smaller in --tiny mode, which proves the code path and whose
timings mean nothing). The FGDS row's peak adds the UNet's graph (1.49 GiB per guided image) to the prediction printed below.

    python benchmarks/gpu_smoke.py [--gen-batch-size 64] [--guidance-batch-size 4] [--gradient-checkpointing] [--out gpu_smoke.json]
    OMP_NUM_THREADS=2 python benchmarks/gpu_smoke.py --device cpu --tiny      # the same code path in seconds, without a GPU
"""
import argparse, dataclasses, json, time
from pathlib import Path
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from diffusers import AutoencoderTiny
from deliberate_practice.config import Sampling
from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
from deliberate_practice.models import create_classifier
from deliberate_practice.pool import Pool
from deliberate_practice.trainer import PRESETS
from full_size import CFG_SCALE, CLASSIFIER_SIZE, GiB, N_CLASSES, N_STEPS, OMEGA, TAESD, n_params, sd15_components, sd15_generator, vit_b16

TINY_SIZE = 32   # tiny mode: classifier input side (the tiny SD makes 16 px images, resized to it); timm 'test_vit' at that size


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def reset_peak(device):
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)

def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == 'cuda' else None

def timed(fn, device)->tuple:
    "(fn(), seconds), the device synchronised around it."
    sync(device); t0 = time.perf_counter(); r = fn(); sync(device)
    return r, time.perf_counter() - t0


def build(a, device):
    "(generator, generator with the TAESD view, guidance classifier, a fresh classifier for training), full size or tiny."
    if a.tiny:
        def gen(taesd=False):
            c = tiny_sd_components()
            return StableDiffusionGenerator(**c, class_names=['tench', 'goldfish'], classifier_size=TINY_SIZE, device=device,
                                            gradient_checkpointing=a.gradient_checkpointing,
                                            guidance_decoder=AutoencoderTiny(encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32),
                                                                             num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)) if taesd else None)
        clf = lambda: create_classifier('test_vit', N_CLASSES, img_size=TINY_SIZE).to(device)
        return gen(), gen(taesd=True), clf().eval(), clf()
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    comps = sd15_components(device, taesd=True)          # random init straight on the device
    g = sd15_generator(comps, device, dtype, gradient_checkpointing=a.gradient_checkpointing)
    # the TAESD generator shares the UNet, VAE and text encoder (gradient checkpointing, if asked, then also covers the TAESD decoder)
    g_taesd = sd15_generator(comps, device, dtype, gradient_checkpointing=a.gradient_checkpointing, taesd=True)
    return g, g_taesd, vit_b16(device).eval(), vit_b16(device, seed=1)


def bench_sampling(a, device, gen, gen_taesd, clf)->dict:
    "Seconds per 50-step image and peak memory of plain vs guided sampling of one generation batch, side by side."
    labels = torch.arange(a.gen_batch_size) % gen.n_classes
    S = Sampling(cfg_scale=CFG_SCALE, n_steps=a.n_steps, batch_size=a.gen_batch_size, guidance_batch_size=a.guidance_batch_size)
    modes = [('plain CFG', gen, dataclasses.replace(S, omega=0.0)), ('guided, every step', gen, dataclasses.replace(S, omega=OMEGA)),
             (f'guided, guide_every={a.guide_every}', gen, dataclasses.replace(S, omega=OMEGA, guide_every=a.guide_every)),
             (f'FGDS form (preset), guide_every={a.guide_every}', gen,
              dataclasses.replace(S, omega=OMEGA, guide_every=a.guide_every, guidance_form='fgds')),
             ('guided, every step, TAESD view', gen_taesd, dataclasses.replace(S, omega=OMEGA))]
    # warm-up at the timed shapes: kernels, cuDNN autotuning
    for _, g, m in modes: g.sample(labels, dataclasses.replace(m, n_steps=1), classifier=clf)
    z = torch.randn(a.gen_batch_size, *gen.latent_shape, device=device)
    with torch.no_grad(): _, t_dec = timed(lambda: gen.decode(z), device)
    res = {}
    for name, g, m in modes:
        reset_peak(device)
        imgs, secs = timed(lambda: g.sample(labels, m, classifier=clf), device)
        if not torch.isfinite(imgs).all(): raise RuntimeError(f"{name}: non-finite images")
        per_image = ((secs - t_dec) * N_STEPS / a.n_steps + t_dec) / a.gen_batch_size
        res[name] = dict(seconds=secs, s_per_50_step_image=per_image, images_per_s=1 / per_image, peak_gib=peak_gib(device))
    base = res['plain CFG']['s_per_50_step_image']
    pred = predicted_peak(a)
    print(f"sampling: batch {a.gen_batch_size}, guidance_batch_size {a.guidance_batch_size}, {a.n_steps} DDIM steps timed, extrapolated to "
          f"{N_STEPS} steps + decode (decode of the batch: {t_dec:.2f} s)")
    print(f"  {'mode':<34}{'s/step batch':>13}{'img/s (50 st)':>15}{'x plain':>9}{'peak GiB':>10}")
    for name, r in res.items():
        r['x_plain'] = r['s_per_50_step_image'] / base
        pk = f"{r['peak_gib']:.2f}" if r['peak_gib'] is not None else '-'
        print(f"  {name:<34}{(r['seconds'] - t_dec) / a.n_steps:>13.3f}{r['images_per_s']:>15.3f}{r['x_plain']:>8.2f}x{pk:>10}")
    if pred is not None: print(f"  predicted peak of guided sampling from full_size_cpu.json (SD fp16 + two ViT-B weights + max(UNet or decode x batch, "
                               f"view x guidance batch)): {pred:.2f} GiB (the TAESD generator's decoder adds a few MiB)")
    return dict(decode_s=t_dec, modes=res, predicted_peak_gib=pred)


def predicted_peak(a)->float:
    "Peak GiB of guided sampling predicted from full_size.py's CPU measurements (None without them or in tiny mode)."
    p = Path(__file__).with_name('full_size_cpu.json')
    if a.tiny or not p.exists(): return None
    r = json.loads(p.read_text()).get('recommend')
    if r is None: return None
    view = r['view_gib_per_image']['ckpt' if a.gradient_checkpointing else 'vae']
    vit_weights = r['vit_state_gib'] / 4                    # its state counts weights, 2 AdamW moments and the EMA: 4 fp32 copies
    batch = a.gen_batch_size * max(r['unet_gib_per_image'], r.get('decode_gib_per_image', 0))
    return r['sd_weights_gib'] + 2 * vit_weights + max(batch, view * a.guidance_batch_size)


def bench_training(a, device, model)->dict:
    "One epoch of ViT-B/16 on a random uint8 Pool: bf16 autocast, AdamW, cross-entropy."
    g = torch.Generator().manual_seed(0)
    size = TINY_SIZE if a.tiny else CLASSIFIER_SIZE
    pool = Pool(torch.randint(0, 256, (a.train_images, 3, size, size), dtype=torch.uint8, generator=g),
                torch.randint(0, N_CLASSES, (a.train_images,), generator=g))
    dl = DataLoader(pool, a.train_batch_size, shuffle=True, drop_last=True, generator=g, pin_memory=device.type == 'cuda')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss
    step(*next(iter(dl)))                                    # warm-up (AdamW state, kernels)
    reset_peak(device)
    def epoch():
        for x, y in dl: loss = step(x, y)
        return loss
    loss, secs = timed(epoch, device)
    n = len(dl) * a.train_batch_size
    res = dict(images=n, batch_size=a.train_batch_size, seconds=secs, images_per_s=n / secs, peak_gib=peak_gib(device), loss=loss.item())
    pk = f"{res['peak_gib']:.2f} GiB" if res['peak_gib'] is not None else '-'
    print(f"training: one epoch of {n} images at {size} px, batch {a.train_batch_size}, bf16 autocast, AdamW: {secs:.2f} s, "
          f"{res['images_per_s']:.0f} images/s, peak {pk}, loss {res['loss']:.3f}")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--tiny', action='store_true', help="tiny SD components and timm 'test_vit' (proves the code path on a CPU)")
    p.add_argument('--gen-batch-size', type=int, default=None, help='images per generation batch (default: 64; tiny: 16)')
    p.add_argument('--guidance-batch-size', type=int, default=None, help="images per guidance backward (default: the preset's, 4; tiny: 4)")
    p.add_argument('--gradient-checkpointing', action='store_true', help="checkpoint the guidance view's decoder")
    p.add_argument('--guide-every', type=int, default=PRESETS['imagenet100']['guide_every'], help="the preset's guide_every row")
    p.add_argument('--n-steps', type=int, default=5, help='DDIM steps timed (a multiple of --guide-every keeps its guided fraction exact)')
    p.add_argument('--train-images', type=int, default=None, help='random pool size (default: 1024; tiny: 256)')
    p.add_argument('--train-batch-size', type=int, default=None, help='training batch (default: 256; tiny: 64)')
    p.add_argument('--out', default='gpu_smoke.json')
    a = p.parse_args()
    for k, full, tiny in (('gen_batch_size', 64, 16), ('guidance_batch_size', PRESETS['imagenet100']['guidance_batch_size'], 4), ('train_images', 1024, 256), ('train_batch_size', 256, 64)):
        if getattr(a, k) is None: setattr(a, k, tiny if a.tiny else full)
    for k in ('gen_batch_size', 'guidance_batch_size', 'guide_every', 'n_steps', 'train_images', 'train_batch_size'):
        if getattr(a, k) < 1: raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    device = torch.device(a.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): raise ValueError("--device cuda: no CUDA device here; use --device cpu --tiny")
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f"{name}, torch {torch.__version__}; {'tiny components' if a.tiny else 'SD 1.5 fp16 + ViT-B/16, random weights'}")
    (gen, gen_taesd, clf, model), t_build = timed(lambda: build(a, device), device)
    print(f"built in {t_build:.1f} s: generator {n_params(gen.unet, gen.vae, gen.text_encoder) / 1e6:.0f} M params ({gen.dtype}), "
          f"classifier {n_params(clf) / 1e6:.1f} M params")
    out = dict(device=name, torch=torch.__version__, args=vars(a), build_s=t_build)
    out['sampling'] = bench_sampling(a, device, gen, gen_taesd, clf)
    del gen, gen_taesd, clf
    if device.type == 'cuda': torch.cuda.empty_cache()
    out['training'] = bench_training(a, device, model)
    out['total_s'] = time.perf_counter() - t_start
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"total {out['total_s']:.0f} s; wrote {a.out}")


if __name__ == '__main__':
    main()

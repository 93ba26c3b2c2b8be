"""Full-size cost of entropy-guided sampling without a GPU: Stable Diffusion 1.5 + ViT-B/16 from their published configs (issue 13).

Random weights, nothing downloaded. Parts (pick with --parts; all but refresh by default):
  flops      FLOPs per DDIM step per image at 512 px (64x64 latents), counted on the meta device (shapes only, no compute):
             plain CFG step, guided with eps detached, guided through the UNet, and the UNet / VAE / ViT split of a guided step;
             then per-image FLOPs of a whole 50-step sample for the cost levers (guide_every, VAE checkpointing, a TAESD view),
             as guided / plain ratios against the ImageNet preset's target of 1.8x.
  memory     activation memory of the guidance view per image (VAE decode -> resize to 224 -> ViT-B/16, forward + backward to
             the latent): measured on real CPU tensors (fp32) at 16 and 24 latent px and on the meta device at 16/24/32 and 64
             (fp32 and fp16, with and without VAE gradient checkpointing, and the TAESD view), fitted linearly in latent pixels
             and extrapolated to 64. Also the UNet's memory per image (no-grad CFG pass, and with grad for guidance through it).
  time       seconds per DDIM step on this CPU (fp32, batch 1) with `guided_ddim_sample`, rows interleaved, best of --repeats,
             at --time-latent (24: 192 px); extrapolated to 512 px piece by piece (UNet, VAE, ViT) with the FLOP counts.
  refresh    (not run by default: 10+ min on 2 cores) one refresh-like `StableDiffusionGenerator.sample`: 2 images at 512 px,
             omega 0.05, 2 DDIM steps, guidance_batch_size 1; with `time` in the same run, also the time predicted for it.
  train      ViT-B/16 training steps at 224 (`fit_classifier`: AdamW), batch 2 and 4: seconds and memory per image.
  recommend  gen_batch_size / guidance_batch_size / checkpointing for a 40 GB GPU with SD in fp16 (memory figures on the meta device).
  genmem     peak memory of one generation batch of 8 / 64 / 256 images at guidance_batch_size 4 and None, eps detached and through
             the UNet: measured (LiveMemory) on a real StableDiffusionGenerator.sample with tiny SD components, and at 512 px fp16
             composed from the memory part's per-image figures (read from --out when memory is not in the same run).
Prints every figure and merges them into --out (default benchmarks/full_size_cpu.json; parts not run keep their last figures).
Never asserts on time.

Memory is counted by `LiveMemory`, a dispatch mode that adds up the bytes of every tensor storage created inside the block while
it is alive (weights and inputs made outside are not counted): "kept" is what is alive after the forward pass (what autograd
keeps for the backward, plus the output), "peak" the maximum over forward and backward. Cross-check: the bytes autograd saves
(`torch.autograd.graph.saved_tensors_hooks`, weights excluded). On the meta device attention is routed to the fused CPU
flash-attention op, as CUDA's flash / memory-efficient kernels are, so no attention matrix is materialised; without that
routing PyTorch's meta SDPA falls back to the math path and over-counts.

    OMP_NUM_THREADS=2 python benchmarks/full_size.py [--parts flops,memory,time,train,recommend,genmem] [--repeats 2] [--time-latent 24]
                                                      [--refresh-size 512] [--refresh-checkpointing] [--threads 2] [--out PATH]
    OMP_NUM_THREADS=2 python benchmarks/full_size.py --parts time,refresh      # the 512 px refresh and its predicted time
"""
import argparse, contextlib, copy, json, math, time, weakref
from pathlib import Path
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
import diffusers
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from deliberate_practice.config import Sampling
from deliberate_practice.generators import StableDiffusionGenerator, tiny_sd_components
from deliberate_practice.guidance import cfg_combine, entropy, guided_ddim_sample
from deliberate_practice.models import create_classifier, fit_classifier

diffusers.utils.logging.set_verbosity_error()   # silence "modules that should be kept in float32: []" on every fp16 cast

# Stable Diffusion 1.5's published configs (Hugging Face model repo runwayml/stable-diffusion-v1-5, now
# stable-diffusion-v1-5/stable-diffusion-v1-5): unet/config.json, vae/config.json, text_encoder/config.json. Every architecture
# field below was checked against those three files in a public GitHub mirror of the repo (HDRJ-One/runwayml-stable-diffusion-v1-5,
# same paths; read with the search tools on 2026-11-30); fields equal to the library defaults are written out anyway.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',), mid_block_type='UNetMidBlock2DCrossAttn',
                 up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3, cross_attention_dim=768, attention_head_dim=8,
                 act_fn='silu', norm_num_groups=32, norm_eps=1e-5, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                 center_input_sample=False, mid_block_scale_factor=1, use_linear_projection=False)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4, act_fn='silu',
                norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_TEXT_ENCODER = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act='quick_gelu', layer_norm_eps=1e-5, projection_dim=768,
                         attention_dropout=0.0, dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
# The noise schedule is tiny_sd_components' DDIMScheduler, "Stable Diffusion 1.5's schedule"; it matches the repo's
# scheduler/scheduler_config.json (scaled_linear, 0.00085-0.012, steps_offset 1, set_alpha_to_one False), also checked in the mirror.
TAESD = {}   # diffusers' AutoencoderTiny defaults are TAESD's architecture (diffusers docs load madebyollin/taesd into it); not checked further
VIT, N_CLASSES, CLASSIFIER_SIZE = 'vit_base_patch16_224', 100, 224    # the ImageNet-100 preset's classifier and its input side
CLASS_NAMES = ('tench', 'goldfish')    # two prompts are enough: the per-image cost does not depend on the number of classes
CFG_SCALE, OMEGA, N_STEPS, TARGET = 3.0, 0.05, 50, 1.8   # the ImageNet preset's lambda, omega and DDIM steps; target: guided <= 1.8x plain FLOPs
LATENT = 64                              # SD 1.5's latent side at 512 px
MiB, GiB = 2 ** 20, 2 ** 30


# ---------------------------------------------------------------- building the full-size pieces
def _rng_devices(device)->list: return [torch.device(device)] if torch.device(device).type == 'cuda' else []   # whose RNG fork_rng restores

def sd15_components(device='cpu',   # where the weights live; 'meta': shapes only, no memory, built instantly
                    seed:int=0,     # seeds the random initial weights
                    taesd:bool=False, # also an AutoencoderTiny (TAESD architecture) for the guidance view
                   )->dict:         # unet, vae, text_encoder, tokenizer, scheduler (and guidance_decoder)
    "SD 1.5's UNet, VAE and CLIP text encoder from the published configs, random weights; tokenizer and schedule without a download."
    with torch.random.fork_rng(devices=_rng_devices(device)), torch.device(device):
        torch.manual_seed(seed)
        comps = dict(unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)))
        if taesd: comps['guidance_decoder'] = AutoencoderTiny(**TAESD)
    tiny = tiny_sd_components(seed)            # its byte-level CLIPTokenizer (ids < 514 < vocab 49408) and SD 1.5's DDIM schedule
    tiny['tokenizer'].model_max_length = SD15_TEXT_ENCODER['max_position_embeddings']
    return dict(comps, tokenizer=tiny['tokenizer'], scheduler=tiny['scheduler'])


def sd15_generator(comps:dict, device, dtype, image_size:int=512, gradient_checkpointing:bool=False, taesd:bool=False,
                   class_names=CLASS_NAMES)->StableDiffusionGenerator:
    "The package's generator over `comps` (gradient_checkpointing mutates comps' decoder: give each setting its own comps)."
    return StableDiffusionGenerator(comps['unet'], comps['vae'], comps['text_encoder'], comps['tokenizer'], comps['scheduler'],
                                    list(class_names), image_size=image_size, classifier_size=CLASSIFIER_SIZE, dtype=dtype,
                                    device=device, gradient_checkpointing=gradient_checkpointing,
                                    guidance_decoder=comps['guidance_decoder'] if taesd else None)


def vit_b16(device='cpu', seed:int=0):
    "ViT-B/16 with 100 classes, random weights, through the package's `create_classifier` (takes [0, 1] images)."
    with torch.random.fork_rng(devices=_rng_devices(device)), torch.device(device):    # built on `device` ('meta': instantly)
        torch.manual_seed(seed)
        return create_classifier(VIT, N_CLASSES)


def n_params(*modules)->int: return sum(p.numel() for m in modules for p in m.parameters())


# ---------------------------------------------------------------- measuring tools
class LiveMemory(TorchDispatchMode):
    "Bytes of the tensor storages created inside the block that are still alive: `live` now, `peak` the maximum (device-agnostic)."
    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs = {}
    def _free(self, key, n): self.live -= n; self._refs.pop(key, None)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {id(a.untyped_storage()) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor): continue
            st = t.untyped_storage()
            key = id(st)
            if key in ins or (key in self._refs and self._refs[key]() is st): continue   # a view of / in-place on something known
            n = st.nbytes()
            self._refs[key] = weakref.ref(st, lambda _, k=key, n=n: self._free(k, n))
            self.live += n
            self.peak = max(self.peak, self.live)
        return out


@contextlib.contextmanager
def saved_bytes(exclude:set):
    "Yields a dict whose 'bytes' is the total of the distinct storages autograd saves for backward inside the block (minus `exclude` ids)."
    seen, res = {}, {'bytes': 0}
    def pack(t):
        st = t.untyped_storage()
        if id(st) not in exclude and id(st) not in seen: seen[id(st)] = st; res['bytes'] += st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): yield res
    seen.clear()


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

@contextlib.contextmanager
def fused_attention():
    "Route `F.scaled_dot_product_attention` to the fused (flash) CPU op, which has meta kernels: meta runs then neither materialise the attention matrix nor lose its FLOPs."
    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try: yield
    finally: F.scaled_dot_product_attention = orig

_aten = torch.ops.aten
if _aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:   # PyTorch counts the CUDA attention kernels only
    register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v))
    register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v))


def count_flops(fn)->int:
    "FLOPs of `fn()` (matmuls, convolutions, attention; forward and whatever backward it runs) by `FlopCounterMode`."
    with FlopCounterMode(display=False) as fc: fn()
    return fc.get_total_flops()


def fit_line(xs, ys)->tuple:
    "Least-squares (slope, intercept) of ys against xs."
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


# ---------------------------------------------------------------- one guided step, piece by piece
def _inputs(gen, lat, batch=1):
    return (torch.zeros(batch, dtype=torch.long, device=gen.device), torch.randn(batch, 4, lat, lat, device=gen.device),
            torch.tensor(500))

def view_grad(gen, vit, z0):
    "d/dz0 of the summed entropy through the generator's guidance view (what `entropy_grad` runs after predict_x0)."
    with torch.enable_grad():
        z0 = z0.detach().requires_grad_(True)
        return torch.autograd.grad(entropy(vit(gen.guidance_view(z0))).sum(), z0)[0]

def through_grad(gen, vit, den, z, t):
    "d/dz_t of the entropy through the UNet as well (`grad_through_denoiser=True`); x0 = z - eps/2 stands in for predict_x0, whose range check cannot run on meta tensors (elementwise: no FLOPs)."
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        eps = cfg_combine(*den(x, t), CFG_SCALE)
        return torch.autograd.grad(entropy(vit(gen.guidance_view(x - 0.5 * eps))).sum(), x)[0]

def vit_grad(vit, batch=1, device='meta'):
    "The classifier part alone: ViT-B/16 forward + backward to its 224 px input."
    with torch.enable_grad():
        x = torch.rand(batch, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE, device=device, requires_grad=True)
        return torch.autograd.grad(entropy(vit(x * 1)).sum(), x)[0]   # x * 1: FlopCounterMode's module hooks refuse a leaf input under autograd.grad

def step_flops(gen, vit, lat:int=LATENT)->dict:
    "FLOPs per image of one DDIM step and its pieces at `lat` latent px (batch 1, so per image)."
    lab, z, t = _inputs(gen, lat)
    den = gen.denoiser(lab)
    with fused_attention():
        r = dict(unet=count_flops(lambda: torch.no_grad()(den)(z, t)), view=count_flops(lambda: view_grad(gen, vit, z)),
                 vit=count_flops(lambda: vit_grad(vit, device=gen.device)), through=count_flops(lambda: through_grad(gen, vit, den, z, t)),
                 decode=count_flops(lambda: torch.no_grad()(gen.decode)(z)))
    r.update(vae=r['view'] - r['vit'], plain=r['unet'], guided=r['unet'] + r['view'], unet_bwd=r['through'] - r['view'] - r['unet'])
    return r

def sample_flops(f:dict, guide_every:int=None, n_steps:int=N_STEPS, through:bool=False)->int:
    "Per-image FLOPs of a whole sample: n_steps DDIM steps (guided every `guide_every`-th, as `guided_ddim_sample`; None: plain) + the final decode."
    n_guided = 0 if guide_every is None else len(range(0, n_steps, guide_every))
    return n_guided * f['through' if through else 'guided'] + (n_steps - n_guided) * f['plain'] + f['decode']


def view_memory(gen, vit, lat:int, batch:int=1)->dict:
    "MiB per image of the guidance view's forward + backward at `lat` latent px: kept after forward, peak, saved by autograd."
    z = torch.randn(batch, 4, lat, lat, device=gen.device).requires_grad_(True)
    weights = {id(p.untyped_storage()) for m in (gen.vae, gen.guidance_decoder, vit) if m is not None for p in m.parameters()}
    with fused_attention() if gen.device.type == 'meta' else contextlib.nullcontext(), LiveMemory() as mem:
        with saved_bytes(weights) as sv: H = entropy(vit(gen.guidance_view(z))).sum()
        kept = mem.live
        torch.autograd.grad(H, z)
    return dict(kept=kept / MiB / batch, peak=mem.peak / MiB / batch, saved=sv['bytes'] / MiB / batch)

def sampler_memory(gen, lat:int=LATENT)->dict:
    "MiB per image at `lat` (meta device): the UNet's CFG pass and the final VAE decode without grad (peak, slope over batch 1 and 2), the CFG pass with grad to z_t."
    no_grad = {'unet': [], 'decode': []}
    with fused_attention():
        for b in (1, 2):
            lab, z, t = _inputs(gen, lat, b)
            with torch.no_grad(), LiveMemory() as mem: gen.denoiser(lab)(z, t)
            no_grad['unet'].append(mem.peak / MiB)
            with torch.no_grad(), LiveMemory() as mem: gen.decode(z)
            no_grad['decode'].append(mem.peak / MiB)
        lab, z, t = _inputs(gen, lat)
        with LiveMemory() as mem:
            x = z.requires_grad_(True)
            torch.autograd.grad(sum(o.sum() for o in gen.denoiser(lab)(x, t)), x)
    return dict(no_grad=no_grad['unet'][1] - no_grad['unet'][0], decode=no_grad['decode'][1] - no_grad['decode'][0], with_grad=mem.peak / MiB)


# ---------------------------------------------------------------- parts
def part_flops(out:dict):
    print("\n== a/c. FLOPs per image at 512 px (64x64 latents), counted on the meta device (FlopCounterMode: matmul, conv, attention)")
    res = {}
    res = {'SD VAE view': sd_vae_step_flops()}
    for name, kw in (('SD VAE view, checkpointed', dict(gradient_checkpointing=True)), ('TAESD view', dict(taesd=True))):
        gen = sd15_generator(sd15_components('meta', taesd=kw.get('taesd', False)), 'meta', torch.float32, **kw)
        res[name] = step_flops(gen, vit_b16('meta'))
    f = res['SD VAE view']
    T = 1e12
    print(f"  per DDIM step per image:  plain CFG step (UNet on batch 2) {f['plain'] / T:6.3f} TFLOP")
    print(f"                            guided, eps detached              {f['guided'] / T:6.3f} TFLOP  ({f['guided'] / f['plain']:.2f}x plain)")
    print(f"                            guided through the UNet           {f['through'] / T:6.3f} TFLOP  ({f['through'] / f['plain']:.2f}x plain)")
    print(f"  split of a guided step:   UNet {f['unet'] / T:.3f} ({f['unet'] / f['guided']:.0%})  VAE decode fwd+bwd {f['vae'] / T:.3f} "
          f"({f['vae'] / f['guided']:.0%})  ViT-B/16 fwd+bwd {f['vit'] / T:.3f} ({f['vit'] / f['guided']:.0%})")
    print(f"  final decode (VAE fwd, no grad) {f['decode'] / T:.3f} TFLOP; UNet backward to z_t (through only) {f['unet_bwd'] / T:.3f} TFLOP")
    for name in ('SD VAE view, checkpointed', 'TAESD view'):
        g = res[name]
        print(f"  {name:<26} guided step {g['guided'] / T:6.3f} TFLOP ({g['guided'] / g['plain']:.2f}x plain); view fwd+bwd {g['view'] / T:.3f}")
    plain = sample_flops(f)
    print(f"\n  whole sample, per image: {N_STEPS} DDIM steps + final decode; plain = {plain / T:.1f} TFLOP. Target: guided <= {TARGET}x plain")
    print(f"  {'guidance view':<28}{'guide_every':>12}{'TFLOP':>9}{'x plain':>9}  meets {TARGET}x")
    levers = []
    for name, g in res.items():
        for k in (1, 2, 4, 5):
            s = sample_flops(g, k)
            levers.append(dict(view=name, guide_every=k, tflop=s / T, ratio=s / plain, meets=s / plain <= TARGET))
    s = sample_flops(f, 1, through=True)
    levers.append(dict(view='SD VAE view, through UNet', guide_every=1, tflop=s / T, ratio=s / plain, meets=s / plain <= TARGET))
    for r in levers: print(f"  {r['view']:<28}{r['guide_every']:>12}{r['tflop']:>9.1f}{r['ratio']:>8.2f}x  {'yes' if r['meets'] else 'no'}")
    out['flops'] = dict(per_step_512={k: {n: v / T for n, v in g.items()} for k, g in res.items()}, unit='TFLOP per image',
                        sample_plain_tflop=plain / T, levers=levers)


def part_memory(out:dict, real_comps:dict=None, real_latents=(16, 24), latents=(16, 24, 32)):
    print("\n== b. Guidance-view activation memory per image: VAE decode -> resize 224 -> ViT-B/16, forward + backward to the latent")
    rows = {}
    if real_comps is not None:   # real CPU tensors, fp32: the measurement
        vit = vit_b16('cpu').eval()
        for ck in (False, True):
            comps = dict(real_comps, vae=copy.deepcopy(real_comps['vae'])) if ck else real_comps
            gen = sd15_generator(comps, 'cpu', torch.float32, gradient_checkpointing=ck)
            rows[('cpu', 'fp32', ck, 'SD VAE')] = {lat: view_memory(gen, vit, lat) for lat in real_latents}
            del gen, comps
    vit = vit_b16('meta').eval()
    for dt, dname in ((torch.float32, 'fp32'), (torch.float16, 'fp16')):   # the meta device: same shapes, no compute, 64 directly
        for ck, taesd in ((False, False), (True, False), (False, True)):
            gen = sd15_generator(sd15_components('meta', taesd=taesd), 'meta', dt, gradient_checkpointing=ck, taesd=taesd)
            rows[('meta', dname, ck, 'TAESD' if taesd else 'SD VAE')] = {lat: view_memory(gen, vit, lat) for lat in (*latents, LATENT)}
    print(f"  {'device':<6}{'dtype':<6}{'view':<8}{'ckpt':<6}" + ''.join(f"{f'peak@{l}':>10}" for l in (*latents, LATENT))
          + f"{'MiB/lat px':>12}{'fit@64 GiB':>12}{'meas@64 GiB':>13}{'kept@64':>9}")
    res = []
    for (dev, dname, ck, view), m in rows.items():
        fl = [l for l in m if l != LATENT]
        slope, icpt = fit_line([l * l for l in fl], [m[l]['peak'] for l in fl])
        fit64 = (icpt + slope * LATENT ** 2) / 1024
        meas = m[LATENT]['peak'] / 1024 if LATENT in m else None
        kept = m[LATENT]['kept'] / 1024 if LATENT in m else None
        print(f"  {dev:<6}{dname:<6}{view:<8}{'yes' if ck else 'no':<6}" + ''.join(f"{m[l]['peak'] if l in m else float('nan'):>10.0f}"
              for l in (*latents, LATENT)) + f"{slope:>12.3f}{fit64:>12.2f}" + (f"{meas:>13.2f}{kept:>9.2f}" if meas else f"{'-':>13}{'-':>9}"))
        res.append(dict(device=dev, dtype=dname, view=view, checkpointing=ck, mib=m, mib_per_latent_px=slope, intercept_mib=icpt,
                        fit_at_64_gib=fit64, measured_at_64_gib=meas, kept_at_64_gib=kept))
    print("  (peak@N: MiB per image, batch 1, at N latent px = 8N image px, over forward + backward; fit: least squares over the smaller\n"
          "   sizes measured, linear in latent pixels; kept@64: GiB alive after the forward pass)")
    for dev, dname in (('cpu', 'fp32'), ('meta', 'fp32')):
        m = rows.get((dev, dname, False, 'SD VAE'))
        if m: print(f"  autograd saved-tensor bytes ({dev}, {dname}, no ckpt): " + ', '.join(f"{l}: {m[l]['saved']:.0f} MiB" for l in m)
                    + "  (what autograd keeps for the backward)")
    um = {}
    for dt, dname in ((torch.float32, 'fp32'), (torch.float16, 'fp16')):
        um[dname] = sampler_memory(sd15_generator(sd15_components('meta'), 'meta', dt))
        print(f"  at 512 px, {dname}, per image: UNet CFG pass without grad {um[dname]['no_grad']:.0f} MiB, final VAE decode without grad "
              f"{um[dname]['decode']:.0f} MiB; CFG pass with grad to z_t (guidance through the UNet) {um[dname]['with_grad'] / 1024:.2f} GiB")
    out['memory'] = dict(view=res, sampler_mib_per_image=um, real_latents=list(real_latents), meta_latents=[*latents, LATENT])


def sd_vae_step_flops(lat:int=LATENT)->dict:
    "`step_flops` of the plain SD VAE view at `lat`, fp32, on the meta device (cached: several parts use it)."
    if lat not in _FLOPS: _FLOPS[lat] = step_flops(sd15_generator(sd15_components('meta'), 'meta', torch.float32), vit_b16('meta'), lat)
    return _FLOPS[lat]
_FLOPS = {}


def part_time(out:dict, real_comps:dict, lat:int, repeats:int)->dict:
    print(f"\n== a. Seconds per DDIM step per image on this CPU (fp32, batch 1, {torch.get_num_threads()} threads), at {lat}x{lat} latents "
          f"({8 * lat} px), rows interleaved, best of {repeats}")
    gen, vit = sd15_generator(real_comps, 'cpu', torch.float32, image_size=8 * lat), vit_b16('cpu')
    lab, z, _ = _inputs(gen, lat)
    def step(**kw):
        s = Sampling(cfg_scale=CFG_SCALE, n_steps=1, **kw)
        return lambda: guided_ddim_sample(gen.denoiser(lab), z, gen.alpha_bar, s, classifier=vit, decode=gen.guidance_view,
                                          **gen.sampler_kw)
    rows = [('plain CFG step', step(omega=0.0)), ('guided, eps detached', step(omega=OMEGA)),
            ('guided, through UNet', step(omega=OMEGA, grad_through_denoiser=True)), ('ViT-B/16 fwd+bwd alone', lambda: vit_grad(vit, device='cpu'))]
    best = {n: math.inf for n, _ in rows}
    for _ in range(repeats):
        for n, fn in rows:
            t0 = time.perf_counter(); fn(); best[n] = min(best[n], time.perf_counter() - t0)
    # each piece's seconds at 512 px = its FLOPs at 512 / its FLOP rate measured here (the ViT sees 224 px at every size)
    fl, f64 = sd_vae_step_flops(lat), sd_vae_step_flops(LATENT)
    t = dict(unet=best['plain CFG step'], vit=best['ViT-B/16 fwd+bwd alone'],
             vae=best['guided, eps detached'] - best['plain CFG step'] - best['ViT-B/16 fwd+bwd alone'],
             unet_bwd=best['guided, through UNet'] - best['guided, eps detached'])
    if min(t.values()) <= 0: print(f"  !! a piece's time came out <= 0 ({t}): the machine was too noisy; rerun with more --repeats")
    rate = {k: fl[k] / max(v, 1e-9) for k, v in t.items()}
    x = {k: f64[k] / rate[k] for k in t}
    est = {'plain CFG step': x['unet'], 'guided, eps detached': x['unet'] + x['vae'] + x['vit'],
           'guided, through UNet': x['unet'] + x['vae'] + x['vit'] + x['unet_bwd'], 'ViT-B/16 fwd+bwd alone': x['vit']}
    base, base512 = best['plain CFG step'], est['plain CFG step']
    print(f"  {'row':<26}{f'measured @{8 * lat}px':>18}{'x plain':>9}{'extrapolated @512px':>22}{'x plain':>9}")
    for n, _ in rows: print(f"  {n:<26}{best[n]:>16.2f} s{best[n] / base:>8.2f}x{est[n]:>20.1f} s{est[n] / base512:>8.2f}x")
    g = est['guided, eps detached']
    print(f"  split of a guided step @512 (time): UNet {x['unet'] / g:.0%}, VAE {x['vae'] / g:.0%}, ViT {x['vit'] / g:.0%};  "
          f"achieved GFLOP/s here: " + ', '.join(f"{k} {v / 1e9:.0f}" for k, v in rate.items()))
    out['time'] = dict(latent=lat, repeats=repeats, threads=torch.get_num_threads(), measured_s=best, extrapolated_512_s=est,
                       gflop_per_s={k: v / 1e9 for k, v in rate.items()}, split_512={k: x[k] / g for k in ('unet', 'vae', 'vit')})
    return rate


def part_refresh(out:dict, real_comps:dict, checkpointing:bool, size:int=512, rate:dict=None):
    print(f"\n== d. One refresh-like call through the package: StableDiffusionGenerator.sample of 2 images at {size} px, classifier_size "
          f"{CLASSIFIER_SIZE}, omega {OMEGA}, n_steps 2, guidance_batch_size 1, gradient_checkpointing={checkpointing} (fp32, CPU)")
    comps = dict(real_comps, vae=copy.deepcopy(real_comps['vae'])) if checkpointing else real_comps
    gen, vit = sd15_generator(comps, 'cpu', torch.float32, image_size=size, gradient_checkpointing=checkpointing), vit_b16('cpu')
    with LiveMemory() as mem:
        t0 = time.perf_counter()
        imgs, stats = gen.sample([0, 1],
                                 Sampling(cfg_scale=CFG_SCALE, omega=OMEGA, n_steps=2, guidance_batch_size=1),
                                 classifier=vit, return_stats=True)
        secs = time.perf_counter() - t0
    if tuple(imgs.shape) != (2, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE) or not torch.isfinite(imgs).all():
        raise RuntimeError(f"refresh returned {tuple(imgs.shape)} images (finite: {bool(torch.isfinite(imgs).all())})")
    res = dict(size=size, seconds=secs, seconds_per_image=secs / 2, peak_gib=mem.peak / GiB, n_guided_steps=stats.n_guided_steps,
               n_nonfinite=stats.n_nonfinite, checkpointing=checkpointing)
    print(f"  {secs:.0f} s ({secs / 2:.0f} s per image: 2 guided steps + the final decode); peak activation memory {mem.peak / GiB:.2f} GiB "
          f"(weights excluded; one image per guidance backward); guided steps {stats.n_guided_steps}, non-finite {stats.n_nonfinite}")
    if rate:   # the same call predicted from the time part's FLOP rates: checks the extrapolation to 512 px
        f = sd_vae_step_flops(size // 8)
        pred = 2 * (2 * (f['unet'] / rate['unet'] + f['vae'] / rate['vae'] + f['vit'] / rate['vit']) + f['decode'] / rate['vae'])
        res['predicted_s'] = pred
        print(f"  predicted from the time part's FLOP rates (UNet, VAE, ViT, measured at small sizes): {pred:.0f} s "
              f"(measured / predicted {secs / pred:.2f})"
              + ("" if not checkpointing else "; the prediction leaves out the checkpoint's recompute"))
    out['refresh'] = res


def part_train(out:dict):
    print("\n== d. ViT-B/16 training step at 224 px through the package's fit_classifier (AdamW, cross-entropy), fp32 CPU")
    res = {}
    for b in (2, 4):
        vit = vit_b16('cpu')
        x, y = torch.rand(b, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE), torch.arange(b) % N_CLASSES
        with LiveMemory() as mem:
            kept = []
            h = vit.register_forward_hook(lambda m, i, o: kept.append(mem.live))   # what the forward leaves for the backward
            t0 = time.perf_counter(); fit_classifier(vit, x, y, epochs=1, lr=1e-4, batch_size=b); secs = time.perf_counter() - t0
            h.remove()
        t0 = time.perf_counter(); fit_classifier(vit, x, y, epochs=2, lr=1e-4, batch_size=b); steady = (time.perf_counter() - t0) / 2
        res[b] = dict(first_step_s=secs, step_s=steady, peak_mib=mem.peak / MiB, kept_after_forward_mib=kept[0] / MiB)
        print(f"  batch {b}: {steady:.2f} s per step ({steady / b:.2f} s per image; the first step {secs:.2f} s); activations kept after forward "
              f"{kept[0] / MiB:.0f} MiB; peak {mem.peak / MiB:.0f} MiB (at the AdamW step: grads + moments + temporaries)")
    per_img = (res[4]['kept_after_forward_mib'] - res[2]['kept_after_forward_mib']) / 2
    print(f"  training activations {per_img:.0f} MiB per image (fp32; slope over the two batches); weights {n_params(vit) * 4 / MiB:.0f} MiB, "
          f"grads + AdamW moments {3 * n_params(vit) * 4 / MiB:.0f} MiB")
    out['train'] = dict(batches=res, activation_mib_per_image=per_img)


def part_recommend(out:dict, gpu_gb:float=40.0, headroom:float=0.15):
    print(f"\n== e. Preset for a {gpu_gb:g} GB GPU, SD in fp16, guidance classifier ViT-B/16 in fp32 (as the trainer's refresh runs its EMA model)")
    comps = sd15_components('meta')
    n_sd, vit_n = n_params(comps['unet'], comps['vae'], comps['text_encoder']), n_params(vit_b16('meta'))
    sd_w, vit_state = n_sd * 2 / GiB, vit_n * 4 * 4 / GiB   # ViT: weights + 2 AdamW moments + EMA, fp32 (grads freed by zero_grad(set_to_none=True))
    vit = vit_b16('meta').eval()
    view = {}
    for ck, taesd in ((False, False), (True, False), (False, True)):
        gen = sd15_generator(sd15_components('meta', taesd=taesd), 'meta', torch.float16, gradient_checkpointing=ck, taesd=taesd)
        view[(ck, taesd)] = view_memory(gen, vit, LATENT)['peak'] / 1024
    sm = sampler_memory(sd15_generator(sd15_components('meta'), 'meta', torch.float16))
    unet, dec = sm['no_grad'] / 1024, sm['decode'] / 1024
    total = gpu_gb * 1e9 / GiB
    avail = total * (1 - headroom) - sd_w - vit_state
    print(f"  GPU {total:.2f} GiB; keep {headroom:.0%} ({total * headroom:.2f} GiB) for the CUDA context, cuDNN workspaces and fragmentation")
    print(f"  weights: SD 1.5 fp16 {sd_w:.2f} GiB ({n_sd / 1e6:.0f} M params x 2 B); "
          f"ViT-B/16 fp32 weights + AdamW moments + EMA {vit_state:.2f} GiB ({vit_n / 1e6:.1f} M params x 4 x 4 B)")
    print(f"  available for activations: {total:.2f} x {1 - headroom:.2f} - {sd_w:.2f} - {vit_state:.2f} = {avail:.2f} GiB")
    print(f"  per image at 512 px: UNet CFG pass (no grad) {unet:.3f} GiB, final decode (no grad) {dec:.3f} GiB; guidance view fwd+bwd "
          f"(fp16 decoder, fp32 ViT): SD VAE {view[(False, False)]:.2f} GiB, checkpointed {view[(True, False)]:.2f} GiB, TAESD {view[(False, True)]:.2f} GiB")
    print("  the UNet pass, the guidance backward (micro-batches of guidance_batch_size) and the final decode run one after the other,")
    print("  so each may use all of it (the latents of the batch held across them are 64 KiB per image)")
    g_max = {k: int(avail // v) for k, v in view.items()}
    gen_max = int(avail // max(unet, dec))
    pow2 = lambda n: 2 ** int(math.log2(n)) if n >= 1 else 0
    gen_bs = min(64, pow2(gen_max))
    gb = pow2(min(g_max[(False, False)], gen_bs))
    ck = gb < 4                          # checkpoint only when the plain view would leave fewer than 4 images per backward
    if ck: gb = pow2(min(g_max[(True, False)], gen_bs))
    print(f"  gen_batch_size <= {avail:.2f} / max({unet:.3f}, {dec:.3f}) = {gen_max} -> {gen_bs} (a power of two, capped at 64: "
          "the UNet is busy long before)")
    print(f"  guidance_batch_size <= {avail:.2f} / {view[(False, False)]:.2f} = {g_max[(False, False)]} without checkpointing, "
          f"{avail:.2f} / {view[(True, False)]:.2f} = {g_max[(True, False)]} with it, {avail:.2f} / {view[(False, True)]:.2f} = "
          f"{g_max[(False, True)]} with a TAESD view")
    use = gb * view[(ck, False)]
    print(f"  recommend: gen_batch_size={gen_bs}, guidance_batch_size={gb}, gradient_checkpointing={ck}: guidance backward "
          f"{gb} x {view[(ck, False)]:.2f} = {use:.1f} GiB, peak ~ {sd_w + vit_state + max(use, gen_bs * max(unet, dec)):.1f} GiB "
          f"of {total:.2f} (checkpointing costs one more decoder forward per guided step: worth it only to lift guidance_batch_size above 4)")
    out['recommend'] = dict(gpu_gb=gpu_gb, headroom=headroom, sd_weights_gib=sd_w, vit_state_gib=vit_state, available_gib=avail,
                            unet_gib_per_image=unet, decode_gib_per_image=dec,
                            view_gib_per_image={('ckpt' if k[0] else 'taesd' if k[1] else 'vae'): v for k, v in view.items()},
                            gen_batch_size=gen_bs, guidance_batch_size=gb, gradient_checkpointing=ck,
                            guidance_batch_size_max=dict(vae=g_max[(False, False)], ckpt=g_max[(True, False)], taesd=g_max[(False, True)]))


# ---------------------------------------------------------------- generation memory against gen_batch_size (issue 28)
GENMEM_BATCHES, GENMEM_GBS, GENMEM_GOAL = (8, 64, 256), 4, 1.10   # gen batches, guidance_batch_size, goal on peak(256) / peak(8)

def tiny_cnn(n_classes:int, seed:int=0)->torch.nn.Module:
    "A small CNN classifier of [0, 1] RGB images, random weights: the genmem part's guidance classifier."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.SiLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, n_classes)).eval()

def sample_peak(gen, clf, batch:int, guidance_batch_size, through:bool)->float:
    "Peak activation MiB (`LiveMemory`) of one `gen.sample` of `batch` images as one generation batch: 2 DDIM steps, the first guided."
    lab = torch.arange(batch) % gen.n_classes
    with LiveMemory() as mem:
        imgs = gen.sample(lab, Sampling(cfg_scale=CFG_SCALE, omega=OMEGA, n_steps=2, batch_size=batch, guide_every=2,
                                        guidance_batch_size=guidance_batch_size, grad_through_denoiser=through),
                          classifier=clf)
    if not torch.isfinite(imgs).all(): raise RuntimeError("genmem: the sample returned non-finite images")
    return mem.peak / MiB

def per_image_512(out:dict, prev:dict)->dict:
    "MiB per image at 512 px, fp16, from the memory part (this run's, else --out's, else full_size_cpu.json's): UNet no-grad / with grad, decode, view."
    default = Path(__file__).with_name('full_size_cpu.json')
    m = out.get('memory') or prev.get('memory') or (json.loads(default.read_text()).get('memory') if default.exists() else None)
    if not m: raise RuntimeError("genmem needs the memory part's figures: run --parts memory,genmem once")
    row = next(r for r in m['view'] if (r['device'], r['dtype'], r['view'], r['checkpointing']) == ('meta', 'fp16', 'SD VAE', False))
    u = m['sampler_mib_per_image']['fp16']
    return dict(unet=u['no_grad'], unet_grad=u['with_grad'], decode=u['decode'],
                view=(row['mib'].get(LATENT) or row['mib'][str(LATENT)])['peak'])   # keys are ints in this run, strings from JSON

def composed_peak_512(p:dict, batch:int, guidance_batch_size, through:bool, state_latents:float)->dict:
    "GiB at 512 px: max over the phases of a chunk of min(batch, guidance_batch_size) images + `batch` x `state_latents` fp32 latents kept across steps."
    k = min(batch, guidance_batch_size or batch)
    phases = dict(unet=k * p['unet'], guidance=k * (p['view'] + (p['unet_grad'] if through else 0)), decode=k * p['decode'])
    state = batch * state_latents * 4 * LATENT ** 2 * 4 / MiB
    return dict(peak=(max(phases.values()) + state) / 1024, phase=max(phases, key=phases.get), state=state / 1024)

def _genmem_table(rows:list, unit:str, per_image:str=None):
    print(f"  {'form':<16}{'guidance_batch_size':>20}" + ''.join(f"{f'peak@{b}':>11}" for b in GENMEM_BATCHES) + f"{'256/8':>8}  flat (<= {GENMEM_GOAL})"
          + (f"  {per_image}" if per_image else ''))
    for r in rows:
        gbs = r['guidance_batch_size'] or 'None (whole)'
        print(f"  {r['form']:<16}{gbs:>20}" + ''.join(f"{r['peak'][b]:>11.2f}" for b in GENMEM_BATCHES)
              + f"{r['ratio']:>8.2f}  {'yes' if r['ratio'] <= GENMEM_GOAL else 'no ':<14}" + (f"{r['growth_kib']:>10.1f} KiB = {r['growth_latents']:6.1f} latents"
              if per_image else '') + f"   ({unit})")

def part_genmem(out:dict, prev:dict):
    print(f"\n== f. Generation memory against gen_batch_size at a fixed guidance_batch_size: StableDiffusionGenerator.sample, one generation batch "
          f"of {', '.join(map(str, GENMEM_BATCHES))} images, 2 DDIM steps (the first guided), omega {OMEGA}")
    p = per_image_512(out, prev)                                      # the 512 px pieces: fail before measuring when they are missing
    gen = StableDiffusionGenerator(**tiny_sd_components(0), class_names=['a', 'b', 'c'], dtype=torch.float32, device='cpu')
    clf, forms = tiny_cnn(gen.n_classes), (('eps detached', False), ('through UNet', True))
    measured = []
    for name, through in forms:
        for gbs in (GENMEM_GBS, None):
            peak = {b: sample_peak(gen, clf, b, gbs, through) for b in GENMEM_BATCHES}
            growth = (peak[GENMEM_BATCHES[-1]] - peak[GENMEM_BATCHES[-2]]) / (GENMEM_BATCHES[-1] - GENMEM_BATCHES[-2]) * 1024   # KiB per image
            measured.append(dict(form=name, guidance_batch_size=gbs, peak=peak, ratio=peak[GENMEM_BATCHES[-1]] / peak[GENMEM_BATCHES[0]],
                                 growth_kib=growth, growth_latents=growth * 1024 / (math.prod(gen.latent_shape) * 4)))
    print(f"  measured (LiveMemory, real CPU compute, fp32): tiny SD components ({gen.generation_size} px, latents {gen.latent_shape}), "
          f"a small CNN classifier; the call's noise, latents and returned images included")
    _genmem_table(measured, 'MiB', f'growth per image {GENMEM_BATCHES[-2]}->{GENMEM_BATCHES[-1]}')
    chunked, lat_kib = [r for r in measured if r['guidance_batch_size']], math.prod(gen.latent_shape) * 4 / 1024
    state_latents = math.ceil(max(r['growth_latents'] for r in chunked))
    act = min((r['peak'][GENMEM_BATCHES[0]] * 1024 - GENMEM_BATCHES[0] * r['growth_kib']) / GENMEM_GBS / lat_kib for r in chunked)
    print(f"  at guidance_batch_size {GENMEM_GBS} what still grows with the batch is what each image keeps across the steps (noise, latent, eps, "
          f"gradient, returned image): {max(r['growth_latents'] for r in chunked):.2f} latent-sized fp32 tensors per image at most (counted as "
          f"{state_latents} below). The tiny networks' activations are only "
          f"~{act:.0f} latents per image (SD-1.5's VAE view at 512 px: {p['view'] * 1024 / (4 * LATENT ** 2 * 4 / 1024):.0f}), so here that state is a visible share")
    composed = []
    for name, through in forms:
        for gbs in (GENMEM_GBS, None):
            c = {b: composed_peak_512(p, b, gbs, through, state_latents) for b in GENMEM_BATCHES}
            peak = {b: v['peak'] for b, v in c.items()}
            composed.append(dict(form=name, guidance_batch_size=gbs, peak=peak, phase={b: v['phase'] for b, v in c.items()},
                                 ratio=peak[GENMEM_BATCHES[-1]] / peak[GENMEM_BATCHES[0]]))
    print(f"  512 px, SD-1.5 fp16 + ViT-B/16 (SD VAE view): composed from the per-image pieces the memory part measures (UNet no-grad "
          f"{p['unet']:.0f}, with grad {p['unet_grad']:.0f}, decode {p['decode']:.0f}, view fwd+bwd {p['view']:.0f} MiB per image):")
    print(f"  peak(B) = max over the phases (UNet pass, guidance backward, decode) of a chunk of min(B, guidance_batch_size) images "
          f"+ B x {state_latents} fp32 latents ({state_latents * 4 * LATENT ** 2 * 4 / MiB:.2f} MiB per image, the measured state above) "
          "kept across the steps; activations only, weights excluded")
    _genmem_table(composed, 'GiB')
    out['genmem'] = dict(batches=list(GENMEM_BATCHES), goal_ratio=GENMEM_GOAL, n_steps=2, guide_every=2, omega=OMEGA,
                         measured_tiny_mib=measured, composed_512_fp16_gib=composed, per_image_512_mib=p, state_latents=state_latents,
                         composed_note='composed from the per-image pieces measured by the memory part (meta device, fp16)')


PARTS = ('flops', 'memory', 'time', 'refresh', 'train', 'recommend', 'genmem')
DEFAULT_PARTS = ('flops', 'memory', 'time', 'train', 'recommend', 'genmem')   # refresh at 512 px takes 10+ min on 2 cores: ask for it

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--parts', default=','.join(DEFAULT_PARTS), help=f"comma-separated subset of {PARTS} (default: all but refresh)")
    p.add_argument('--repeats', type=int, default=2, help='timing repeats (best of)')
    p.add_argument('--time-latent', type=int, default=24, help='latent side for the CPU timing (8x that in pixels)')
    p.add_argument('--refresh-size', type=int, default=512, help='image side of the refresh call (512: the real thing)')
    p.add_argument('--refresh-checkpointing', action='store_true', help='the refresh call with gradient_checkpointing=True')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads (at most 2 on the shared machine)')
    p.add_argument('--out', default=str(Path(__file__).with_name('full_size_cpu.json')))
    a = p.parse_args()
    parts = a.parts.split(',')
    if bad := set(parts) - set(PARTS): raise ValueError(f"--parts must be a subset of {PARTS}, got {sorted(bad)}")
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} CPU threads; parts: {', '.join(parts)}")
    out = dict(parts=parts, torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads())
    real = None
    if {'memory', 'time', 'refresh'} & set(parts):
        t0 = time.perf_counter()
        real = sd15_components('cpu')
        print(f"built SD 1.5 on the CPU (fp32, random weights) in {time.perf_counter() - t0:.0f} s: UNet {n_params(real['unet']) / 1e6:.1f} M, "
              f"VAE {n_params(real['vae']) / 1e6:.1f} M, text encoder {n_params(real['text_encoder']) / 1e6:.1f} M params")
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    rate = {k: v * 1e9 for k, v in prev['time']['gflop_per_s'].items()} if 'time' in prev else None   # a refresh alone: the last time part's rates
    for part in PARTS:
        if part not in parts: continue
        t0 = time.perf_counter()
        if part == 'flops': part_flops(out)
        elif part == 'memory': part_memory(out, real)
        elif part == 'time': rate = part_time(out, real, a.time_latent, a.repeats)
        elif part == 'refresh': part_refresh(out, real, a.refresh_checkpointing, a.refresh_size, rate)
        elif part == 'train': part_train(out)
        elif part == 'recommend': part_recommend(out)
        elif part == 'genmem': part_genmem(out, prev)
        out.setdefault('part_seconds', {})[part] = time.perf_counter() - t0
        print(f"  [{part}: {time.perf_counter() - t0:.0f} s]")
    total = out['total_seconds'] = time.perf_counter() - t_start
    prev.setdefault('runs', []).append({k: out.pop(k) for k in ('parts', 'part_seconds', 'total_seconds', 'threads')})
    Path(a.out).write_text(json.dumps({**prev, **out}, indent=1, default=str))
    print(f"\ntotal {total:.0f} s; wrote {a.out}")


if __name__ == '__main__':
    main()

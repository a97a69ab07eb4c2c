"""Train the embedded default model and the digit classifier, then commit-ready files and a sample grid.

    python scripts/train_embedded.py            # full recipe (~30 min on one CPU core)
    python scripts/train_embedded.py --steps 200 --out /tmp/try   # quick smoke run

Writes ditas_trt/models/embedded/digits_dit.safetensors (+ .json), ditas_trt/eval/embedded/digits_classifier.safetensors
and docs/embedded_samples.png. Data: scikit-learn's 8x8 digits, upsampled to 16x16 (no download).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ditas_trt.artifacts import atomic_path, write_json_atomic
from ditas_trt.data import load_digits, train_test_split
from ditas_trt.diffusion import create_diffusion
from ditas_trt.diffusion.sampling import SamplingOptions, sample
from ditas_trt.eval.classifier import CLASSIFIER_PATH, DigitClassifier
from ditas_trt.eval.images import save_grid
from ditas_trt.models import DiT, save_dit
from ditas_trt.models.embedded import EMBEDDED_CONFIG, EMBEDDED_PATH

REPO = Path(__file__).resolve().parents[1]


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (padding with background) — classifier augmentation only."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    out = torch.empty_like(x)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


def train_classifier(images, labels, train_idx, test_idx, epochs: int, seed: int) -> tuple[DigitClassifier, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in tqdm(range(epochs), desc="classifier"):
        model.train()
        for batch in train_idx[torch.randperm(len(train_idx), generator=gen)].split(64):
            loss = F.cross_entropy(model(random_shift(images[batch], gen)), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean())
    return model, accuracy


def train_dit(images, labels, steps: int, batch: int, lr: float, ema_decay: float, seed: int) -> DiT:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DiT(**EMBEDDED_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0)
    warmup = min(500, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps))).item() * 0.9 + 0.1)
    )
    model.train()
    progress = tqdm(range(steps), desc="DiT")
    for step in progress:
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=gen)
        noise = torch.randn(images[idx].shape, generator=gen)
        loss = diffusion.training_losses(model, images[idx], t, dict(y=labels[idx]), noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        if step % 100 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    return ema.eval()


@torch.no_grad()
def sample_accuracy(model: DiT, classifier: DigitClassifier, per_class: int, options: SamplingOptions, seed: int):
    labels = torch.arange(10).repeat_interleave(per_class)
    torch.manual_seed(seed)
    images = sample(model, labels, in_channels=1, input_size=16, num_classes=10, options=options, progress=True)
    accuracy = float((classifier(images.clamp(-1, 1)).argmax(1) == labels).float().mean())
    return images, labels, accuracy


def main(args):
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    dit_path = out / "digits_dit.safetensors" if out else EMBEDDED_PATH
    cls_path = out / "digits_classifier.safetensors" if out else CLASSIFIER_PATH
    grid_path = out / "embedded_samples.png" if out else REPO / "docs" / "embedded_samples.png"

    images, labels = load_digits()
    train_idx, test_idx = train_test_split(images.shape[0], seed=args.seed)
    started = time.time()
    classifier, cls_acc = train_classifier(images, labels, train_idx, test_idx, args.classifier_epochs, args.seed)
    print(f"classifier held-out accuracy: {cls_acc:.4f}")
    with atomic_path(cls_path) as tmp:
        save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp),
                  metadata={"heldout_accuracy": f"{cls_acc:.4f}"})

    # The DiT trains on every digit: it is a generator, and the classifier's held-out split measures the classifier.
    model = train_dit(images, labels, args.steps, args.batch, args.lr, args.ema, args.seed)
    model = model.half().float()  # the committed weights are fp16; evaluate exactly what ships
    options = SamplingOptions(steps=args.eval_steps, sampler="ddpm", cfg_scale=args.cfg_scale)
    samples, sample_labels, acc = sample_accuracy(model, classifier, args.eval_per_class, options, args.seed)
    print(f"FP sample class accuracy ({args.eval_per_class * 10} samples, {options.respacing} DDPM steps, cfg {options.cfg_scale}): {acc:.4f}")

    recipe = {k: v for k, v in vars(args).items() if k != "out"}
    info = {"recipe": recipe, "classifier_heldout_accuracy": cls_acc, "fp_sample_accuracy": acc,
            "fp_sample_setting": {"steps": options.steps, "sampler": options.sampler, "cfg_scale": options.cfg_scale,
                                  "samples": args.eval_per_class * 10},
            "train_seconds": round(time.time() - started, 1), "dataset": "sklearn.datasets.load_digits, 16x16 bilinear"}
    half = DiT(**EMBEDDED_CONFIG)
    half.load_state_dict(model.state_dict())
    save_dit(half.half(), dit_path, extra_metadata={"training": json.dumps(info)})
    write_json_atomic(dit_path.with_name(dit_path.name + ".json"), {"config": EMBEDDED_CONFIG, **info})
    save_grid(samples[:: max(1, args.eval_per_class // 10)][:100], grid_path, nrow=10)
    print(f"wrote {dit_path}, {cls_path}, {grid_path}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--classifier-epochs", type=int, default=30)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--eval-per-class", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1 keeps runs reproducible and robust to a busy machine")
    parser.add_argument("--out", default=None, help="write here instead of into the package (for trial runs)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

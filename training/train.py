"""Train the demo model on procedural faces: epsilon-prediction DDPM, EMA weights, loss log.

    python -m training.train --seed 0 --steps 3600 --batch 64 --out runs/faces32

Uses the same UNet, diffusion and loader code as the official checkpoints (`models/`). Writes
`<out>/ema.pt` (the EMA state dict, what the `faces32` preset ships), `<out>/loss.jsonl` and
periodic checkpoints, so an interrupted run still leaves usable weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import models
from models.presets import FACES32_CONF

from service.faces import TRAIN_SEEDS, face_batch


def make_dataset(count: int, seed: int, size: int) -> torch.Tensor:
    """`count` training faces from the training seed range, as uint8 [N x 3 x H x W]."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.randint(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, (count,), generator=g).tolist()
    return torch.from_numpy(face_batch(seeds, size))


def train(*, seed: int, steps: int, batch: int, lr: float, ema_decay: float, dataset_size: int,
          out: Path, threads: int | None, log_every: int = 25, save_every: int = 500) -> Path:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    conf = FACES32_CONF
    net = models.build_unet(conf)
    ema = models.build_unet(conf).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    diffusion = models.build_diffusion({**conf, "timestep_respacing": ""})
    alphas_cumprod = diffusion.schedule(None).alphas_cumprod.float()
    num_steps = len(alphas_cumprod)
    t0 = time.time()
    data = make_dataset(dataset_size, seed, int(conf["image_size"]))
    print(f"dataset: {len(data)} faces in {time.time() - t0:.0f}s; parameters: "
          f"{sum(p.numel() for p in net.parameters()):,}", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    g = torch.Generator().manual_seed(seed + 1)
    log = open(out / "loss.jsonl", "w")
    running, started = 0.0, time.time()
    for step in range(1, steps + 1):
        # Linear warm-up, then cosine decay to 10% of the peak rate.
        scale = step / warmup if step <= warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = data[idx].float() / 127.5 - 1
        flip = torch.rand(batch, generator=g) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, num_steps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        ac = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        loss = (net(x_t, t) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))  # EMA warm-up for short runs
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - decay)
        running += loss.item()
        if step % log_every == 0:
            entry = {"step": step, "loss": running / log_every, "lr": lr * scale,
                     "elapsed_s": round(time.time() - started, 1)}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            print(json.dumps(entry), flush=True)
            running = 0.0
        if step % save_every == 0 or step == steps:
            torch.save(ema.state_dict(), out / "ema.pt")
            torch.save(net.state_dict(), out / "model.pt")
    log.close()
    return out / "ema.pt"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--dataset-size", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/faces32"))
    args = parser.parse_args(argv)
    path = train(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, ema_decay=args.ema_decay,
                 dataset_size=args.dataset_size, out=args.out, threads=args.threads)
    print(f"wrote {path} (sha256 {models.sha256_of(path)})")


if __name__ == "__main__":
    main()

"""Training throughput (audio seconds per second) of each model preset, with torchaudio's ``hubert_pretrain_base``
measured in the same run as the baseline.

One training step = forward with masking and labels, masked cross-entropy + feature penalty, backward, AdamW step,
on a fixed random batch (the data pipeline is not part of it). CPU (default when no GPU): a small batch and a few
steps, fp32. CUDA: the paper's per-GPU batch (36.5 s of audio, as 3 x 12.17 s) under bf16 autocast.

    python experiments/bench_pretrain.py                      # all presets, auto device
    python experiments/bench_pretrain.py --presets vanilla --steps 5 --batch 2 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubert_lit.lit.losses import batch_objective, prediction_terms  # noqa: E402
from hubert_lit.models import build_hubert  # noqa: E402

# "preset:field=value" applies an override; vanilla with the wav2vec 2.0 front end is torchaudio's architecture.
PRESETS = (
    "vanilla:frontend=wav2vec2",
    "vanilla",
    "conformer_s",
    "squeezeformer_xs",
    "sparseformer_dn_s",
    "sparseformer_sw_s",
)
SAMPLE_RATE = 16000


def frames(num_samples: int) -> int:
    return (num_samples - 400) // 320 + 1


def timed_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def ours_step(spec: str, waves, lengths, labels, autocast):
    preset, *pairs = spec.split(":")
    overrides = dict(pair.split("=", 1) for pair in pairs)
    model = build_hubert(preset, num_classes=100, **overrides).to(waves.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    def step():
        with autocast():
            out = model(waves, lengths, labels=labels)
            loss = batch_objective(model.config, prediction_terms(out))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def torchaudio_step(waves, lengths, labels, autocast):
    import torchaudio

    model = torchaudio.models.hubert_pretrain_base(num_classes=100).to(waves.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    def step():
        with autocast():
            logit_m, _, feature_pen = model(waves, labels, lengths)
        # torchaudio's logits put the true class first (index 0)
        loss = (
            F.cross_entropy(
                logit_m.float(),
                torch.zeros(len(logit_m), dtype=torch.long, device=waves.device),
                reduction="mean",
            )
            + 10.0 * feature_pen
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets", nargs="+", default=list(PRESETS), help="model presets to measure (preset[:field=value])"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch", type=int, default=None, help="utterances per batch (CPU 2, CUDA 3)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per utterance (CPU 4, CUDA 12.17)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (CPU 3, CUDA 10); median reported"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    batch = args.batch or (3 if cuda else 2)
    seconds = args.seconds or (12.17 if cuda else 4.0)
    steps = args.steps or (10 if cuda else 3)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = nullcontext
    torch.manual_seed(0)
    n = int(seconds * SAMPLE_RATE)
    waves = (0.1 * torch.randn(batch, n)).to(device)
    lengths = torch.full((batch,), n, dtype=torch.long, device=device)
    labels = torch.randint(0, 100, (batch, frames(n)), device=device)
    audio = batch * seconds
    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    print(
        f"device {device} ({where}); batch {batch} x {seconds:.2f} s = {audio:.1f} s of audio; "
        f"{'bf16 autocast' if cuda else 'fp32'}; median of {steps} steps after {args.warmup} warm-up"
    )

    results = []
    _, step = torchaudio_step(waves, lengths, labels, autocast)
    base = audio / timed_steps(step, steps, args.warmup, device)
    results.append({"model": "torchaudio hubert_pretrain_base", "audio_s_per_s": base, "ratio": 1.0})
    del step
    for preset in args.presets:
        model, step = ours_step(preset, waves, lengths, labels, autocast)
        rate = audio / timed_steps(step, steps, args.warmup, device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        results.append(
            {"model": f"hubert_lit {preset}", "params_M": params, "audio_s_per_s": rate, "ratio": rate / base}
        )
        del model, step
        if cuda:
            torch.cuda.empty_cache()
    width = max(len(r["model"]) for r in results)
    print(f"{'model'.ljust(width)}  params(M)  audio-s/s  vs torchaudio")
    for r in results:
        params = f"{r['params_M']:9.1f}" if "params_M" in r else " " * 9
        print(f"{r['model'].ljust(width)}  {params}  {r['audio_s_per_s']:9.2f}  {r['ratio']:11.2f}x")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": str(device), "batch": batch, "seconds": seconds, "results": results}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

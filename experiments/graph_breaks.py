"""Graph breaks of one training forward + loss per preset, as a new user meets them: ``torch._dynamo.explain`` of
``batch_objective(config, prediction_terms(model(waveforms, lengths, labels)))`` on a padded 2 x 2 s batch.

    python experiments/graph_breaks.py                       # the five tiny presets, FastConv front end
    python experiments/graph_breaks.py --frontend wav2vec2 --reasons

Each break is a host read (a host-device sync on a GPU) that also splits the graph ``torch.compile`` can fuse.
Before the compile-clean step (hubert-lit 0.1.0 code, torch 2.14, either front end): vanilla 19, conformer_s 17,
squeezeformer_xs 27, sparseformer_dn_s 25, sparseformer_sw_s 25; now 0 for each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubert_lit.lit.losses import batch_objective, prediction_terms  # noqa: E402
from hubert_lit.models import build_hubert  # noqa: E402
from hubert_lit.profile.paper_tables import ENCODERS  # noqa: E402

TINY = tuple(f"{name}_tiny" for name in ENCODERS)


def graph_breaks(preset: str, frontend: str, samples: int = 32000) -> tuple[int, list[str]]:
    """(breaks, their reasons) of a training forward + loss of ``preset`` on a padded 2-utterance batch."""
    torch.manual_seed(0)
    model = build_hubert(preset, num_classes=100, frontend=frontend).train()
    waves = torch.randn(2, samples)
    lengths = torch.tensor([samples, samples * 3 // 4])
    labels = torch.randint(0, 100, (2, model.num_frames(samples)))

    def step(w, n, y):
        return batch_objective(model.config, prediction_terms(model(w, n, y)))

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(waves, lengths, labels)
    return explanation.graph_break_count, [b.reason.splitlines()[0] for b in explanation.break_reasons]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(TINY))
    parser.add_argument("--frontend", default="fastconv", choices=("fastconv", "wav2vec2"))
    parser.add_argument("--reasons", action="store_true", help="print each break's reason")
    args = parser.parse_args(argv)
    print(f"| preset ({args.frontend}) | graph breaks |\n|---|---|")
    for preset in args.presets:
        count, reasons = graph_breaks(preset, args.frontend)
        print(f"| {preset} | {count} |")
        if args.reasons:
            for reason in reasons:
                print(f"|   | {reason} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CTC sequence tasks: ASR (characters), PR (phones) and SF (characters with slot tags).

Heads: PR is one linear layer per frame (s3prl ``FrameLevel``); ASR and SF use a projection + bidirectional
LSTM stack (s3prl ``RNNs``, narrower). Blank is index 0; decoding is greedy (best path, repeats merged, blanks
removed), with no language model, as in SUPERB.

SF targets follow s3prl's ``character-slot`` mode: the item's ``target`` string
``"PLAY THE B-music_item SONG E-music_item"`` becomes the characters of the words, one space token between words,
and one token per ``B-<slot>`` / ``E-<slot>`` tag placed right before / after its value (no spaces around tags).
A decoded tag reads ``"B-<slot> "`` / ``" E-<slot>"``, so a decoded sequence is again a tagged string.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.superb.heads import FrameLinear, RecurrentCTC
from hubert_lit.superb.metrics import (
    char_error_rate_of,
    phone_error_rate,
    slot_type_f1,
    slot_value_cer,
    strip_slot_tags,
    word_error_rate_of,
)
from hubert_lit.superb.tasks.base import DownstreamTask, Item
from hubert_lit.superb.tasks.config import TaskConfig

BLANK = "<blank>"


def is_slot_tag(token: str) -> bool:
    return token.startswith(("B-", "E-")) and len(token) > 2


def slot_target_tokens(target: str) -> list[str]:
    """Tokens of a tagged SF target (see the module docstring)."""
    tokens: list[str] = []
    seen_word = False
    for word in target.split():
        if word.startswith("E-") and is_slot_tag(word):
            tokens.append(word)
            continue
        if seen_word and not (tokens and tokens[-1].startswith("B-")):
            tokens.append(" ")
        if word.startswith("B-") and is_slot_tag(word):
            tokens.append(word)
        else:
            tokens.extend(word)
            seen_word = True
    return tokens


def render_tokens(tokens: list[str]) -> str:
    """Decoded text of SF tokens: tags as ``"B-x "`` / ``" E-x"``, characters as themselves."""
    parts = []
    for token in tokens:
        if token.startswith("B-") and is_slot_tag(token):
            parts.append(token + " ")
        elif token.startswith("E-") and is_slot_tag(token):
            parts.append(" " + token)
        else:
            parts.append(token)
    return "".join(parts)


def greedy_ctc(log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
    """Best-path decoding of (B, T, C) scores: argmax, merge repeats, drop blank (0)."""
    best = log_probs.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids, previous = [], None
        for i in row[:n]:
            if i != previous and i != 0:
                ids.append(i)
            previous = i
        out.append(ids)
    return out


class CTCRecognition(DownstreamTask):
    """ASR / PR / SF: CTC over a vocabulary built from the training targets."""

    croppable = False

    def __init__(self, config: TaskConfig, splits: dict[str, list[Item]], meta: dict[str, Any] | None = None):
        super().__init__(config, splits, meta)
        field = {"asr": "text", "pr": "phones", "sf": "target"}.get(config.task)
        if field is None:
            raise ValueError(f"{config.task} is not a CTC task")
        self.field = field
        for split, items in splits.items():
            missing = [item.get("id", "?") for item in items if field not in item]
            if missing:
                raise ValueError(
                    f"{config.task}/{split}: {len(missing)} items lack {field!r}, e.g. {missing[0]!r}"
                )
        # meta.json's vocabulary (SF: characters + B-/E- tag of every slot type), else what train shows
        vocab = list(
            self.meta.get("vocab") or sorted({t for item in splits["train"] for t in self.tokens(item)})
        )
        if config.task == "sf" and self.meta.get("vocab"):
            vocab += [f"{edge}-{slot}" for slot in self.meta.get("slot_types", []) for edge in ("B", "E")]
        self.vocab = [BLANK, *vocab]
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def tokens(self, item: Item) -> list[str]:
        """ASR: characters; PR: phones; SF: characters and slot tags."""
        value = item[self.field]
        return slot_target_tokens(value) if self.config.task == "sf" else list(value)

    def build_head(self, dim: int) -> nn.Module:
        cfg = self.config
        if cfg.task == "pr":
            return FrameLinear(dim, len(self.vocab))
        return RecurrentCTC(
            dim, cfg.proj_dim, cfg.hidden_dim, cfg.num_rnn_layers, cfg.dropout, len(self.vocab)
        )

    def target(self, item: Item, split: str, num_frames: int) -> list[int]:
        if split != "train":
            return []  # dev/test are scored on their reference strings
        tokens = self.tokens(item)
        unknown = sorted(set(tokens) - set(self.index))
        if unknown:
            raise ValueError(
                f"{self.config.task}/train: item {item.get('id')!r} has tokens outside the "
                f"vocabulary: {unknown[:10]}"
            )
        return [self.index[t] for t in tokens]

    def collate_targets(self, targets: list[Any], num_frames: int) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        return flat, lengths

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, targets: tuple[Tensor, Tensor]) -> Tensor:
        flat, target_lengths = targets
        log_probs = F.log_softmax(head(x, lengths).float(), dim=-1).transpose(0, 1)  # (T, B, C)
        return F.ctc_loss(
            log_probs, flat, lengths, target_lengths, blank=0, reduction="mean", zero_infinity=True
        )

    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor) -> list[Any]:
        ids = greedy_ctc(head(x, lengths), lengths)
        tokens = [[self.vocab[i] for i in row] for row in ids]
        if self.config.task == "pr":
            return tokens
        if self.config.task == "asr":
            return ["".join(t) for t in tokens]
        return [render_tokens(t) for t in tokens]

    def score(self, split: str, predictions: list[Any]) -> dict[str, float]:
        items = self.splits[split]
        if self.config.task == "pr":
            return {"per": phone_error_rate([item["phones"] for item in items], predictions)}
        if self.config.task == "asr":
            refs = [item["text"] for item in items]
            return {
                "wer": word_error_rate_of(refs, predictions),
                "cer": char_error_rate_of(refs, predictions),
            }
        refs = [item["target"] for item in items]
        plain_refs, plain_hyps = [strip_slot_tags(r) for r in refs], [strip_slot_tags(h) for h in predictions]
        return {
            "slot_type_f1": slot_type_f1(refs, predictions),
            "slot_value_cer": slot_value_cer(refs, predictions),
            "wer": word_error_rate_of(plain_refs, plain_hyps),
            "cer": char_error_rate_of(plain_refs, plain_hyps),
        }

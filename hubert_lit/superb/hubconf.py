"""s3prl hub entries for hubert-lit checkpoints (s3prl registers every public callable of an upstream's
``hubconf.py`` as a name for ``-u``).

Use from an s3prl checkout (see the README, "Running the real SUPERB with s3prl"): put
``from hubert_lit.superb.hubconf import *`` in ``s3prl/upstream/hubert_lit/hubconf.py`` and import that module in
``s3prl/hub.py``; then ``python run_downstream.py -m train -u hubert_lit_custom -k model.ckpt -d <task> ...``.
"""

from __future__ import annotations

from typing import Any

from hubert_lit.superb.s3prl_upstream import UpstreamExpert as _UpstreamExpert

__all__ = ["hubert_lit_custom", "hubert_lit_local"]


def hubert_lit_custom(ckpt: str, *args: Any, **kwargs: Any) -> _UpstreamExpert:
    """Upstream from a hubert-lit model file (``.ckpt``, ``save_model`` file or binarized model)."""
    return _UpstreamExpert(ckpt, *args, **kwargs)


def hubert_lit_local(ckpt: str, *args: Any, **kwargs: Any) -> _UpstreamExpert:
    """Alias of :func:`hubert_lit_custom` (s3prl's ``<name>_local`` naming convention)."""
    return hubert_lit_custom(ckpt, *args, **kwargs)

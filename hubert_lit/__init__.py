"""hubert-lit: HuBERT pretraining with swappable encoders, BiT binarization, profiling and SUPERB-style evaluation."""

__version__ = "0.1.0"


def load_model(path, map_location="cpu"):
    """Rebuild a model, in eval mode, from any file the suite writes (pretraining ``.ckpt``, ``save_model`` files).

    See :func:`hubert_lit.checkpoint.load_model`.
    """
    from hubert_lit.checkpoint import load_model as _load

    return _load(path, map_location=map_location)

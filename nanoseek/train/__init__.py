"""Training: the shared loop (``Trainer``), optimizer and schedules, losses, checkpoints,
logging, and the pretraining stage.

- ``loop.py``: ``Trainer(model, optim, run, loss_fn, data, ...)``, ``train_step``, ``fit``.
- ``optim.py``: AdamW parameter groups, LR schedules (v3 / wsd / cosine), batch ramp,
  ``ExpertBalancer`` (auxiliary-loss-free balance-bias update).
- ``losses.py``: cross-entropy, MTP loss, sequence-wise balance loss, ``LMLoss``.
- ``state.py``: atomic trainer checkpoints (HF model dir + sidecar), exact resume.
- ``metrics.py``: JSONL / console / TensorBoard logging, MFU, plots.
- ``config.py``: TOML config sections and ``--section.key value`` overrides.
- ``pretrain.py``: ``nanoseek pretrain`` (``main(argv)``).

Names below are imported lazily.
"""

from __future__ import annotations

from nanoseek._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "Trainer": "nanoseek.train.loop",
    "TrainState": "nanoseek.train.loop",
    "NonFiniteLossError": "nanoseek.train.loop",
    "OptimConfig": "nanoseek.train.config",
    "RunConfig": "nanoseek.train.config",
    "load_config": "nanoseek.train.config",
    "LMLoss": "nanoseek.train.losses",
    "ExpertBalancer": "nanoseek.train.optim",
    "lr_at": "nanoseek.train.optim",
    "PretrainConfig": "nanoseek.train.pretrain",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

"""``nanoseek speedrun``: corpus → tokenizer → pretrain → SFT → GRPO → rejection sampling →
distillation → eval → decode speed → ``report.md``, resumable, at toy scale on a CPU.

- ``presets.py``: stage sizes and expected times (``cpu`` default, ``ci``, ``gpu``).
- ``stages.py``: each stage, calling the existing APIs in-process.
- ``run.py``: markers, resume, progress and ETA, the command line (``main(argv)``).
- ``report.py``: ``report.md`` from the run folder; ``plots.py`` its PNGs; ``costs.py`` its
  cost section.
"""

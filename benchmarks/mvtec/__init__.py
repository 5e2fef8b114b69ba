"""The small-data comparison suite behind ``benchmarks/mvtec_suite.py``, one concern per module.

- :mod:`.definitions`: what is compared: methods and their grids, ablation levers, protocols, and the
  fairness rules every definition must pass.
- :mod:`.cells`: one cell: its files, its config, training it, reading its record back.
- :mod:`.schedule`: the phases (tune, main, ablation) over the cells, shared between workers through
  claims, resumed from the finished records, within a wall-clock budget.
- :mod:`.statistics`: means, paired differences with the corrected resampled t-interval.
- :mod:`.report`: tables, figures, the embedding map and the markdown report.
"""

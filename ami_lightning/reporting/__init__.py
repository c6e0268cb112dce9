"""What a run reports, for each of its detectors: results files, tables, plots, sample figures, W&B logging and
sweep summaries.

* :mod:`~ami_lightning.reporting.results`: the data model (:class:`~ami_lightning.reporting.results.RunResults`,
  :class:`~ami_lightning.reporting.results.SetResult`), ``results.json`` and ``write_all`` (the names other code
  uses are re-exported there);
* :mod:`~ami_lightning.reporting.formatting`: rates in % with counts and intervals, JSON-safe values;
* :mod:`~ami_lightning.reporting.tables`: the rich table and ``results.md``;
* :mod:`~ami_lightning.reporting.plots`: ``detection_rates.png``, ``roc.png``, ``undetected.png``;
* :mod:`~ami_lightning.reporting.samples`: ``SampleBatch`` and the sample figures;
* :mod:`~ami_lightning.reporting.metrics`: the scalar metrics for any logger;
* :mod:`~ami_lightning.reporting.wandb_logging`: the W&B table, figures and metrics;
* :mod:`~ami_lightning.reporting.sweeps`: the summary of a Hydra multirun.
"""

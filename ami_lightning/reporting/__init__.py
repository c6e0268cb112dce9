"""What a run reports: results files, tables, plots, sample figures, W&B logging and sweep summaries."""

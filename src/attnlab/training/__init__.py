"""Training around the LightningModule: resuming a killed run, faults and fault injection, sweep
jobs and their result.json, checks before training, loggers and run metadata, callbacks, metrics,
the learning-rate schedule, and the run's own log. The entry points (train.py) put it together."""

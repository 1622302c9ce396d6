"""Evaluation: metrics (pure functions), the full-ranking evaluator, baselines' and models' reports,
the oracle ceiling, bootstrap uncertainty."""

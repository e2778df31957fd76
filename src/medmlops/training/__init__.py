"""Training-side evaluation: metrics, statistics, tabular baselines and report figures."""

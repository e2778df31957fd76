"""Evaluation: metrics, bootstrap statistics, figures, and the papers' reports (ICH Table/Fig., COVID protocol tables)."""

"""The ablation report: published numbers, the tables and DVC rows, the figures."""

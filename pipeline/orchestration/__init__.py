"""Running and recording the study: MLflow tracking, params overrides, the DVC runner, the flow, the CLI."""

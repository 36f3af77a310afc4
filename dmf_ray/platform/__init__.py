"""Many runs: search spaces, Ray Train workers, Tune sweeps, MLflow tracking and the registry."""

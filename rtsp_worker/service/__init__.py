"""Around the pipeline: metrics and the process-level services."""

"""The training workflow: loaders for ML frameworks (more to come: models, export)."""

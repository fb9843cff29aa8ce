"""Inference on raw events: model packages applied to events as they are in ROOT files."""

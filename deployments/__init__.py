"""Deployment definitions in Python (`serve`), for set-ups without a work pool."""

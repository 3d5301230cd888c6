"""Turning a model into candidates and back: calibration sets, the packed candidate store,
applying a plan to a live model and restoring it."""

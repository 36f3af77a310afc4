"""The method: drift fields and their families, friction, generators, the OFM baseline.

Pure functions on tensors: no files, no Ray, no MLflow.
"""

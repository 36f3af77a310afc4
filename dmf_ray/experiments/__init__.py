"""Small self-contained experiments that reproduce figures and checks of the DMF paper."""

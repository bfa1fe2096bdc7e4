"""Matplotlib drawing, one submodule per stage (model code never imports this package)."""

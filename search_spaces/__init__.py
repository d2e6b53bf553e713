"""Declarative search spaces: parameters <-> pruning plans."""

"""Stores: one typed interface (base), one module per backend."""

from __future__ import annotations

from .base import Store, StoreError, StoreLocked, Tx

__all__ = ["Store", "StoreError", "StoreLocked", "Tx"]

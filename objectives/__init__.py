"""Objectives a candidate plan is scored by."""

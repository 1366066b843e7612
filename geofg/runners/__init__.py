"""Runners execute a plan's pending units; the local runner is the default."""

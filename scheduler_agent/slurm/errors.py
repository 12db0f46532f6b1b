"""Errors of the Slurm backend: one base class, one subclass for a node Slurm does not know."""

from __future__ import annotations


class SlurmError(Exception):
    """A Slurm command failed (after its retries) or its output made no sense; the message
    names the command, its exit status and what Slurm said."""


class UnknownNode(SlurmError):
    """A GPU's node (from the alert's ``instance`` or ``node`` label) has no Slurm node; the
    message says which label held what, which nodes Slurm has, and how to map it."""

"""Orchestrations as workflows (issue #21): the pure parts the step machine builds on.

:mod:`taskorch.workflows.refs` parses, checks and resolves ``{{ path }}`` references;
:mod:`taskorch.workflows.kinds` holds the step kinds' shapes, the create-time checks, output
keeping and a check's ``{"goto": ...}``. Neither does I/O.
"""

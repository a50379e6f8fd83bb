"""Test doubles that ship with netplane, for its own tests, its bench, and embedders' tests.

:mod:`netplane.testing.fakekube` is a fake Kubernetes API server that speaks
the real list/watch protocol over HTTPS. It needs the ``test`` extra
(trustme) and is imported only when asked for.
"""

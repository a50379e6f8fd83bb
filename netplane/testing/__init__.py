"""Test helpers that ship with netplane, for its own tests, its bench, and embedders' tests.

- :mod:`netplane.testing.process`: ``netplane`` as a child process
  (:class:`~netplane.testing.process.Netplane`): started with its output in
  files, waited for until ``/readyz`` answers, stopped by its PID. Its
  fixture form is ``start_netplane`` in the repository's tests/conftest.py.
- :mod:`netplane.testing.ports`: free ports for the servers a test starts.
- :mod:`netplane.testing.http`: a test backend's requests, parsed by h11.
- :mod:`netplane.testing.fakekube`: a fake Kubernetes API server that speaks
  the real list/watch protocol over HTTPS. It needs the ``test`` extra
  (trustme) and is imported only when asked for.

No production module imports this package.
"""

"""netplane.ingress: the HTTP/1.1 and TLS ingress proxy (Ingress v1 routing, SNI).

Installed from the top-level ``ingress/`` folder (pyproject ``package-dir``).
The route table (:mod:`.routes`), the HTTP/1.1 client protocol on httptools,
the upstream pools (:mod:`.upstream`), TLS with SNI (:mod:`.certs`) and the
plane that runs them (:mod:`.plane`).
"""

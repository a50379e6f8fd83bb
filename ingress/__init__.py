"""netplane.ingress: the HTTP/1.1 and TLS ingress proxy (Ingress v1 routing, SNI).

Installed from the top-level ``ingress/`` folder (pyproject ``package-dir``).
The route table and the httptools proxy land here with the ingress issue.
"""

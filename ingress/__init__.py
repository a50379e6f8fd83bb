"""netplane.ingress: the HTTP/1.1, HTTP/2 and TLS ingress proxy (Ingress v1 routing, SNI, gRPC).

Installed from the top-level ``ingress/`` folder (pyproject ``package-dir``).
The route table (:mod:`.routes`), the HTTP/1.1 client protocol on httptools
(:mod:`.http`), the HTTP/2 client protocol (:mod:`.http2`) on a codec of our
own (:mod:`.h2_codec`), the exchange both drive (:mod:`.exchange`), the
upstream pools for HTTP/1.1 (:mod:`.upstream`) and HTTP/2 endpoints
(:mod:`.upstream_h2`), TLS with SNI (:mod:`.certs`) and the plane that runs
them (:mod:`.plane`).
"""

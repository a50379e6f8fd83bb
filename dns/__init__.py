"""netplane.dns: cluster DNS (service A/AAAA/SRV/PTR records, forwarding, cache).

Installed from the top-level ``dns/`` folder (pyproject ``package-dir``), so
that netplane never claims the top-level ``dns`` name that dnspython owns.
The zone (:mod:`.zone`), answer synthesis (:mod:`.answer`), the UDP/TCP
server on dnslib (:mod:`.server`), the forwarder (:mod:`.upstream`) and its
cache (:mod:`.cache`), run by :mod:`.plane`.
"""

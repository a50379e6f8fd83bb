"""netplane.dns: cluster DNS (service A/AAAA/SRV/PTR records, forwarding, cache).

Installed from the top-level ``dns/`` folder (pyproject ``package-dir``), so
that netplane never claims the top-level ``dns`` name that dnspython owns.
The zone, the answer synthesis and the dnslib server land here with the DNS issue.
"""

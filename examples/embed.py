"""Embedding netplane: push objects in from your own control plane, read changes out.

Run it with ``python examples/embed.py``; it prints the endpoints of one
service as they change and exits.
"""

import asyncio

import netplane


async def main() -> None:
    config = netplane.Config(mode="local", admin=None)
    async with netplane.Dataplane(config) as dp:
        changes = dp.subscribe()
        dp.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }
        )
        for ready in (True, False):
            dp.apply(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": "web-1",
                        "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": "web"},
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [
                        {"addresses": ["127.0.10.1"], "conditions": {"ready": ready}},
                    ],
                }
            )
            change = await anext(changes)
            entry = dp.table.get("shop", "web")
            port = entry.ports[0]
            backends = ", ".join(
                f"{b.address}:{b.port} {'ready' if b.ready else 'not ready'}" for b in port.backends
            )
            print(f"changed {sorted(str(k) for k in change.objects)}")
            print(f"shop/web {entry.service.cluster_ips[0]}:{port.port} -> {backends}")
        dp.delete("Service", "shop", "web")
        await anext(changes)
        print(f"after delete: {dp.table.get('shop', 'web')}")


if __name__ == "__main__":
    asyncio.run(main())

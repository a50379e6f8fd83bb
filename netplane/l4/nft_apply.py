"""The kernel datapath's I/O: nftables transactions, the table as it is, conntrack.

Thin on purpose: what to write comes from :mod:`netplane.l4.nft_ruleset`.
Every transaction is one script that the kernel commits as a whole or not
at all. It runs through libnftables (Debian's ``libnftables1``, which the
``nft`` command is built on) in this process, called through ctypes from a
worker thread; where the library cannot be loaded, through ``nft -f -`` in a
subprocess, as kube-proxy runs it. The library saves the process start and
the dynamic loading of each ``nft`` run, which at 10k services is most of an
incremental transaction's time. (Debian's Python binding of the library,
``python3-nftables``, is not on PyPI and lives outside virtualenvs; it is
the same ctypes calls.)

Conntrack entries are deleted through netlink (pyroute2, already the
address plane's library), from a worker thread as :mod:`netplane.addresses`
does, so that no pyroute2 object crosses threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterable

from netplane.l4.nft_ruleset import FAMILY, TABLE

log = logging.getLogger("netplane.l4.nftables")

#: Where nft is also looked for: a service manager's PATH may lack the sbin directories.
_SBIN = "/usr/sbin:/sbin:/usr/local/sbin"
#: Lines of nft's error output kept in a log line (the rest repeats the script).
_ERROR_LINES = 6


class NftError(Exception):
    """``nft`` refused a transaction, or could not run."""


class _Library:
    """libnftables through ctypes: one context, used by one thread at a time."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self._lib = lib = cdll
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> _Library | None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            return cls(ctypes.CDLL(name))
        except (OSError, AttributeError):
            return None

    def run(self, script: str, *, json_output: bool = False) -> tuple[int, str, str]:
        """(status, output, error) of one script; blocking (the GIL is released meanwhile)."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, 1 << 4 if json_output else 0)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


class Nft:
    """Runs nftables scripts: through libnftables when it loads, else the ``nft`` command."""

    def __init__(self, binary: str, library: _Library | None = None) -> None:
        self.binary = binary
        self._library = library

    @property
    def backend(self) -> str:
        """ "libnftables" or the ``nft`` command's path (for /debug/state)."""
        return "libnftables" if self._library is not None else self.binary

    @classmethod
    def find(cls, *, library: bool = True) -> Nft | None:
        """The ``nft`` on PATH (and in the sbin directories), or None.

        Its presence is the test that nftables is installed; ``library``
        False runs every transaction through it instead of libnftables.
        The environment variable ``NETPLANE_NFT`` names the command instead
        (a path, or a name looked up on PATH); one that is not there means
        no nftables, which the tests use to try the start without it.
        """
        if named := os.environ.get("NETPLANE_NFT"):
            path = shutil.which(named)
        else:
            path = shutil.which("nft") or shutil.which("nft", path=_SBIN)
        if not path:
            return None
        return cls(path, _Library.load() if library else None)

    async def _run(self, args: list[str], stdin: str | None = None) -> str:
        if self._library is not None:
            if args[:2] == ["-f", "-"]:
                script, as_json = stdin or "", False
            else:
                as_json = args[:1] == ["-j"]
                script = " ".join(args[1:] if as_json else args)
            rc, out, err = await asyncio.to_thread(self._library.run, script, json_output=as_json)
            if rc != 0:
                raise NftError(_error_text(err) or f"libnftables returned {rc}")
            return out
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise NftError(f"cannot run {self.binary}: {e}") from None
        raw_out, raw_err = await proc.communicate(stdin.encode() if stdin is not None else None)
        if proc.returncode != 0:
            text = _error_text(raw_err.decode(errors="replace"))
            raise NftError(text or f"{self.binary} exited with status {proc.returncode}")
        return raw_out.decode(errors="replace")

    async def check(self) -> None:
        """Raise NftError unless this process may read and change the ruleset.

        It lists a table that does not exist: "No such file or directory"
        proves the access. (``list tables`` would read nft's whole cache,
        4.5 s with a 10k-service table in place.)
        """
        try:
            await self._run(["list", "table", FAMILY, f"{TABLE}-access-probe"])
        except NftError as e:
            if not _absent(e):
                raise

    async def apply(self, script: str) -> None:
        """Run ``script`` as one transaction (``nft -f -``)."""
        await self._run(["-f", "-"], stdin=script)

    async def tables(self) -> dict[str, tuple[set[str], set[str]]]:
        """``{table: (chains, sets and maps)}`` of netplane's tables (``netplane``, ``netplane-N``).

        Read as three name listings, not ``list table`` (whose rules and
        elements make 8 s and 69 MB of JSON at 10k services: 0.4 s this way).
        A table with no chain is not listed: the full script declares it.
        """
        found: dict[str, dict[str, set[str]]] = {}
        for kind in ("chains", "sets", "maps"):
            out = await self._run(["-j", "list", kind, FAMILY])
            for item in json.loads(out).get("nftables", ()):
                for key in ("chain", "set", "map"):
                    obj = item.get(key)
                    if obj is None:
                        continue
                    table = obj.get("table", "")
                    if table == TABLE or table.startswith(f"{TABLE}-"):
                        names = found.setdefault(
                            table, {"chain": set(), "set": set(), "map": set()}
                        )
                        names[key].add(obj["name"])
        return {
            t: (names["chain"], names["set"] | names["map"])
            for t, names in found.items()
            if names["chain"]
        }

    async def ruleset_size(self) -> tuple[int, int]:
        """(rules, bytes of ``nft list table``) over netplane's tables, for the bench."""
        rules = size = 0
        for table in sorted(await self.tables()):
            out = await self._run(["list", "table", FAMILY, table])
            size += len(out.encode())
            rules += sum(
                1
                for line in out.splitlines()
                if line.startswith("\t\t")
                and not line.startswith("\t\t\t")  # continued map elements
                and not line.lstrip().startswith(("type ", "elements", "flags"))
            )
        return rules, size


def _absent(e: NftError) -> bool:
    return "No such file" in str(e) or "does not exist" in str(e)


def _error_text(err: str) -> str:
    lines = [line.strip() for line in err.strip().splitlines() if line.strip()]
    return "; ".join(lines[:_ERROR_LINES])


def clear_udp_flows(
    targets: Iterable[tuple[str | None, int, str, int]],
    frontends: Iterable[tuple[str | None, int]],
) -> int:
    """Delete UDP conntrack entries: those of ``targets`` (frontend ip, frontend port,
    endpoint address, endpoint port: an endpoint that left a service port, whose flows
    through that port's frontends go, not those of other services it serves), and
    requests to ``frontends`` (ports that had no endpoint). A frontend ip None is a
    NodePort, on any address. Returns how many went. Blocking: call it from a thread.

    A UDP flow's conntrack entry keeps the DNAT it was given, so without this
    a client that keeps sending (a DNS resolver's fixed port, say) stays on an
    endpoint that is gone, or unanswered after a reject, until the entry
    times out; kube-proxy clears the same entries.
    """
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    gone: dict[tuple[str, int], set[tuple[str | None, int]]] = {}
    for front_ip, front_port, address, port in targets:
        gone.setdefault((address, port), set()).add((front_ip, front_port))
    fronts = {(a, p) for a, p in frontends}
    if not gone and not fronts:
        return 0
    deleted = 0
    with Conntrack() as ct:
        for family in (socket.AF_INET, socket.AF_INET6):
            match = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)
            # The whole dump first: each of pyroute2's sync calls (delete too) closes
            # the event loop that a dump still being read runs on.
            for entry in list(ct.dump_entries(tuple_orig=match)):
                orig, reply = entry.tuple_orig, entry.tuple_reply
                via = gone.get((reply.saddr, reply.sport), ())
                if (
                    (orig.daddr, orig.dport) in via
                    or (None, orig.dport) in via
                    or (orig.daddr, orig.dport) in fronts
                    or (None, orig.dport) in fronts
                ):
                    try:
                        ct.delete(entry)
                        deleted += 1
                    except OSError:  # gone meanwhile
                        pass
    return deleted

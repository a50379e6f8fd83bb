"""An explanation as text for an 80-column terminal.

Each line is ``label:`` in a fixed column, then the value, wrapped under the
value's first character; lists (rules that lost, endpoints, dig's lines) go
under their label, indented. The renderer reads only the JSON document
(``-o json`` prints the same one), so an answer from a running netplane's
admin server renders exactly as one computed here.
"""

from __future__ import annotations

import textwrap
from typing import Any

from netplane.explain.common import conditions

WIDTH = 80
_COLUMN = 11  # "endpoints: " is the longest label
_LOST_SHOWN = 8  # rules that lost, listed in text (those that matched the path always are)


def render(doc: dict[str, Any]) -> str:
    kind = doc.get("kind")
    out = _Lines()
    if kind == "http":
        _http(doc, out)
    elif kind == "l4":
        _l4(doc, out)
    elif kind == "dns":
        _dns(doc, out)
    else:
        out.field("answer", str(doc.get("answer", doc)))
    for problem in doc.get("problems") or ():
        out.field("problem", problem)
    return "\n".join(out.lines) + "\n"


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def title(self, text: str) -> None:
        self.lines.extend(textwrap.wrap(text, WIDTH, subsequent_indent="    ",
                                        break_on_hyphens=False) or [""])  # fmt: skip

    def field(self, label: str, value: str) -> None:
        head = f"{label}:".ljust(_COLUMN) if label else " " * _COLUMN
        if len(head) >= _COLUMN and not head.endswith(" "):
            head += " "
        lines = textwrap.wrap(
            value,
            WIDTH,
            initial_indent=head,
            subsequent_indent=" " * _COLUMN,
            break_on_hyphens=False,
        )
        self.lines.extend(lines or [head.rstrip()])

    def item(self, mark: str, text: str, why: str = "") -> None:
        """``  + text`` with ``why`` wrapped under it, indented further."""
        self.lines.extend(textwrap.wrap(text, WIDTH, initial_indent=f"  {mark} ",
                                        subsequent_indent="      ", break_on_hyphens=False))  # fmt: skip
        if why:
            self.lines.extend(textwrap.wrap(why, WIDTH, initial_indent="      ",
                                            subsequent_indent="        ",
                                            break_on_hyphens=False))  # fmt: skip

    def verbatim(self, text: str) -> None:
        """A preformatted line (dig's), indented by two; a long one continues below."""
        line = "  " + text.expandtabs(8)
        while len(line) > WIDTH:
            cut = line.rfind(" ", 0, WIDTH)
            if cut <= 4:
                cut = WIDTH
            self.lines.append(line[:cut].rstrip())
            line = "      " + line[cut:].lstrip()
        self.lines.append(line)


def _candidates(doc: dict[str, Any], out: _Lines) -> None:
    got = doc.get("candidates")
    if got:
        out.field("nearest", ", ".join(got))
    elif "candidates" in doc:
        out.field("nearest", "nothing close")


# -- HTTP ---------------------------------------------------------------------------


def _http(doc: dict[str, Any], out: _Lines) -> None:
    r = doc["request"]
    extra = "".join(f" -H '{h}'" for h in r["headers"])
    out.title(f"{r['method']} {doc['target']}{extra}")
    out.field("answer", doc.get("answer", ""))
    lst = doc.get("listener")
    if lst:
        if lst["kind"] == "Gateway":
            chosen = f", listener {lst['chosen']}" if lst.get("chosen") else ""
            out.field("listener", f"Gateway {lst['protocol']} {lst['address']}{chosen}")
        else:
            out.field("listener", f"Ingress {lst['protocol']} {lst['address'] or '(off)'}")
        if lst.get("note"):
            out.field("", lst["note"])
    host = doc.get("host")
    if host:
        if "how" in host:
            if host["rule_host"] is None:
                text = f"{host['name']}: no rule host takes it"
            else:
                how = {"exact": "exact rule host", "wildcard": "wildcard rule host",
                       "any": "rules without a host"}[host["how"]]  # fmt: skip
                text = f"{host['name']}: {how} {host['rule_host']}"
        else:
            text = (f"{host['name']}: listener hostname {host['listener_hostname'] or '(any)'},"
                    f" route hostname {host['rule_host'] or '(any)'}"
                    if host["rule_host"] is not None
                    else f"{host['name']}: no route hostname on this listener takes it")  # fmt: skip
        out.field("host", text)
        for other in host.get("others", ()):
            out.field("", f"{other['host']}: {other['why']}")
    m = doc.get("match")
    if m:
        out.field("matched", _rule(m))
    lost = doc.get("lost") or []
    if lost:
        out.field("lost", "")
        matching = [x for x in lost if x.get("matches", True)]
        others = [x for x in lost if not x.get("matches", True)]
        room = max(0, _LOST_SHOWN - len(matching))
        for x in matching + others[:room]:
            out.item("-", _rule(x), x["why"])
        if len(others) > room:
            out.item(" ", f"... and {len(others) - room} more paths that do not match"
                     " (-o json lists them)")  # fmt: skip
    _candidates(doc, out)
    policy = doc.get("policy")
    if policy:
        out.field("policy", "")
        for p in policy:
            out.item("*", f"{p['name']}: {p['detail']}")
    elif m:
        out.field("policy", "no filter or annotation changes this request")
    d = doc.get("decision")
    if d and doc.get("found", True):
        if d["action"] == "forward":
            out.field("decision", f"forward to {d['service']} as {d['upstream']} {d['path']};"
                      f" endpoints in the order tried: {', '.join(d['targets'])}")  # fmt: skip
            if d.get("set_cookie"):
                out.field("", f"Set-Cookie: {d['set_cookie']}")
        elif d["action"] == "redirect":
            out.field("decision", f"{d['status']} redirect to {d['location']}")
        else:
            out.field("decision", f"{d['status']}: {d['body']}")
    b = doc.get("backend")
    if b:
        out.field("service", f"{b['service']} port {b['port']}")
        _endpoints(b.get("endpoints", ()), out)
        out.field("fallback", f"with no ready endpoint: {b['if_none_ready']}")
    tls = doc.get("tls")
    if tls:
        out.field("tls", f"SNI {tls['sni'] or '(none)'}: {tls['why']}")
        c = tls.get("certificate")
        if c:
            names = ", ".join(c["dnsNames"]) or "none"
            out.field("", f"certificate {c['subject']}; names {names}; until {c['notAfter']}")
        if tls.get("warning"):
            out.field("", f"warning: {tls['warning']}")


def _rule(m: dict[str, Any]) -> str:
    text = f"{m['source']} {m['object']}"
    if m.get("rule") is not None:
        text += f" rule {m['rule']}"
        if m.get("path_index") is not None:
            text += f" path {m['path_index']}"
        if m.get("match") is not None:
            text += f" match {m['match']}"
    if m.get("pathType") == "defaultBackend":
        return text + (f" defaultBackend of host {m['host']}" if m.get("host")
                       else " defaultBackend (controller-wide)")  # fmt: skip
    text += f": {m['pathType']} {m['path']}"
    if m.get("host"):
        text += f" on host {m['host']}"
    if m.get("conditions"):
        text += f" when {', '.join(m['conditions'])}"
    return text


def _endpoints(eps: Any, out: _Lines) -> None:
    if not eps:
        out.field("endpoints", "none")
        return
    out.field("endpoints", "(+ used, - left out)")
    for e in eps:
        where = []
        if e.get("node"):
            where.append(f"node {e['node']}")
        if e.get("zone"):
            where.append(f"zone {e['zone']}")
        if e.get("hints"):
            where.append(f"hints {','.join(e['hints'])}")
        text = f"{e['address']}  {conditions(e)}" + (f"  {' '.join(where)}" if where else "")
        why = e.get("why", "")
        out.item("+" if e.get("used") else "-", text, "" if why == conditions(e) else why)


# -- L4 -----------------------------------------------------------------------------


def _l4(doc: dict[str, Any], out: _Lines) -> None:
    out.title(doc["target"])
    out.field("answer", doc.get("answer", ""))
    _candidates(doc, out)
    for p in doc.get("ports", ()):
        port = p["port"]
        text = f"{p['service']} ({p['type']}) port {port['name'] or port['port']}:"
        text += f" {port['port']}/{port['protocol']} -> {port['targetPort']}"
        if port["nodePort"]:
            text += f", nodePort {port['nodePort']}"
        out.field("service", text)
        fe = p["frontend"]
        out.field("frontend", f"{fe['address']} {fe['kind']}: {fe['traffic']} traffic")
        out.field("frontends", ", ".join(p["frontends"]))
        dpath = p["datapath"]
        out.field("datapath", f"{dpath['name'] or 'none'}: {dpath['reason']}")
        prog = dpath.get("programmed")
        if prog:
            out.field("", f"in the kernel: {prog['datapath']}, {prog['endpoints']} endpoints for"
                      f" cluster traffic, {prog['external_endpoints']} for external"
                      f" ({prog['reason']})")  # fmt: skip
        pol = p["policy"]
        text = f"{pol['balancing']}; session affinity {pol['affinity']}; {pol['traffic_policy']}"
        if pol["proxy_protocol"]:
            text += "; PROXY protocol v2"
        out.field("policy", text)
        if pol.get("problem"):
            out.field("", pol["problem"])
        node = p["node"]
        out.field("node", f"{node['name'] or '(unnamed: --node-name)'}, zone"
                  f" {node['zone'] or '(none)'}")  # fmt: skip
        _endpoints(p["endpoints"], out)
        out.field("order", ", ".join(p["order"]) or "no candidate")


# -- DNS ----------------------------------------------------------------------------


def _dns(doc: dict[str, Any], out: _Lines) -> None:
    title = f"{doc['name']} {doc['type']}"
    if doc["target"] != doc["name"]:
        title = f"{doc['target']} ({title})"
    out.title(title)
    out.field("answer", doc.get("answer", ""))
    why = doc.get("why") or []
    for i, line in enumerate(why):
        if line.startswith("  "):
            out.item(" ", line.strip())
        else:
            out.field("why" if i == 0 else "", line)
    _candidates(doc, out)
    dig = doc.get("dig")
    if dig:
        out.field("dig", "")
        for line in dig:
            out.verbatim(line)

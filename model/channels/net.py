"""Network facts both channels need without each other's dependencies (the API's uvicorn, the PACS client's
requests)."""
from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, an IPv4 or a bracketed IPv6 address) is this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

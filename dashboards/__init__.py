"""Grafana dashboards of the platform: panel definitions (:mod:`.panels`), their checks
(:mod:`.checks`) and the script that writes the JSON (``build.py``). Repository tooling,
not part of the installed ``embedforge`` package."""

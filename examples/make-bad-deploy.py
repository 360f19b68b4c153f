#!/usr/bin/env python3
"""Writes examples/bad-deploy.jsonl: 30 min healthy on v2.3.0, a deploy of v2.3.1
that carries a migration, then 12 % errors and a slower p95 until v2.3.0 is back
at 10:42:30 (as it would be after rollwatch's rollback), then 20 min healthy.
Deterministic (seeded), standard library only."""
import datetime
import json
import random
from pathlib import Path

random.seed(7)
start = datetime.datetime(2026, 11, 24, 10, 0, 0, tzinfo=datetime.timezone.utc)


def at(i):
    return (start + datetime.timedelta(seconds=15 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")


def observation(i, version, error_rate, p95):
    requests = random.randint(1100, 1300)
    users = random.randint(850, 950)
    return {
        "at": at(i),
        "up": True,
        "requests": requests,
        "errors": round(requests * error_rate * random.uniform(0.8, 1.2)),
        "latency_ms": {"p50": round(p95 * 0.4), "p95": round(p95 * random.uniform(0.95, 1.05)), "p99": round(p95 * 1.9)},
        "users": users,
        "users_affected": round(users * error_rate * 0.5),
        "checks": {"data_integrity": True, "critical_features": True},
        "version": version,
    }


lines = [observation(i, "v2.3.0", 0.004, 210) for i in range(120)]
lines.append({"at": at(120), "event": "deploy", "version": "v2.3.1", "previous": "v2.3.0", "migrations": ["0042_add_index"]})
lines += [observation(i, "v2.3.1", 0.12, 290) for i in range(120, 170)]
lines += [observation(i, "v2.3.0", 0.004, 210) for i in range(170, 250)]
out = Path(__file__).with_name("bad-deploy.jsonl")
out.write_text("".join(json.dumps(line) + "\n" for line in lines))

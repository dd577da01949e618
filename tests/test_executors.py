"""The Ray map draws its items as tasks finish, so a map over a million shards stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys

RAY_MAP_DRAWING = """
import json
import ray
from foundation.executors import ray_map

drawn = []

def items():
    for i in range(12):
        drawn.append(i)
        yield i

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
seen = []
for result in ray_map(in_flight=3)(lambda i: i * i, items()):
    seen.append((result, len(drawn)))
print(json.dumps(seen))
"""


def test_ray_map_keeps_at_most_in_flight_tasks_out_and_returns_every_result():
    """When the first result arrives, only the tasks in flight were drawn (3), and one more to
    replace it; every item still gives its result once. Ray runs in a child, as conftest asks."""
    done = subprocess.run([sys.executable, "-c", RAY_MAP_DRAWING], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert sorted(result for result, _ in seen) == [i * i for i in range(12)]
    assert [drawn for _, drawn in seen][:3] == [4, 5, 6]

"""The background agent's benchmark (`scripts/bench_agent.py`) on the link lab, as modules:

- `helper`: the HTTP helper run in the client namespace (standard library only);
- `rig`: `netprobe serve`, `netprobe agent` and the helper in a `LinkLab` (`rig()`, `Rig`);
- `usage`: idle CPU and memory, monitoring cost, status latency (`bench_idle`, `bench_monitor`);
- `reaction`: one degrade-and-recover run (`reaction_run`), also used by
  tests/lab/test_agent_lab.py;
- `report`: the sections the script prints and the summary of figures against `targets`.

Nothing is imported here, so ``python -m netprobe.bench.agent.helper`` starts quickly.
"""

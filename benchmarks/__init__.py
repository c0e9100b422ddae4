"""ovsw_jax's benchmarks: one script per benchmark, run from the repo root.

  python -m benchmarks.train_step     # the train step, ours against PyTorch
  python -m benchmarks.throughput     # the same across batch sizes
  python -m benchmarks.step_variants  # XLA options and conv formulations
  python -m benchmarks.convergence    # vanilla / AGS / SAD / OvSW on CIFAR-10
  python -m benchmarks.deploy         # packed 1-bit files: sizes, latency
  python -m benchmarks.optimizer_state  # optimizer-state bytes per weight

What they share lives in `benchmarks.lib`. Results go to benchmarks/results/.
"""

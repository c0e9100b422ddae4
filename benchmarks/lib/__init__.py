"""What the benchmarks share.

* `timing`: the interleaved timer and the summaries of its times;
* `arms`: the timed arms (our jitted train step, the PyTorch step) and the
  synthetic config and batch they run on;
* `step_comparison`: the train-step comparison that train_step and
  throughput report;
* `breakdown`, `profiling`: where the step's time goes (separately jitted
  parts; per-op times from a `jax.profiler` trace);
* `deploy_files`, `deploy_latency`: the deploy benchmark's model files and
  its batch-1 latency workers;
* `machine`: the machine, versions and git commit a result was measured on;
* `per_core`: the per-core image benchmarks' options, pinned worker, timing
  rounds and bar chart (input_pipeline, image_sources);
* `results`: JSON output;
* `torch_reference`, `torch_step`: the reference's models and training step
  in PyTorch (the tests use them too); `torch_device`: that step on torch's
  device, with the reference's float16 AMP on CUDA. Only these three
  import torch;
* `accelerator_step`, `accelerator_loop`, `time_to_accuracy`,
  `accelerator_plot`, `device_info`, `budget`: the parts of
  ``python -m benchmarks.accelerator`` (step speed, the loop by input, time
  to accuracy, its figure, the devices and clocks, the time budget).
"""

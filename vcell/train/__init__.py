"""Training. `ray_train.train` is the driver (checks, Ray cluster, TorchTrainer); each Ray worker
runs `worker.train_worker`: Lightning (`module.VCellModule`) with DDP or DeepSpeed (`strategy`,
`deepspeed_cpu`), checkpoints through `checkpoint` (the only checkpoint I/O; `repartition` writes
the universal copy of a DeepSpeed checkpoint resumed on another number of workers), numbers through
`tracking`. `plain.fit` is a single-process loop for checks and notebooks."""

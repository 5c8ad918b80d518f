"""The one composable model (`VirtualCell`), its enhancements and the catalogue (`zoo`).

Nothing here imports ray, deepspeed or torch.distributed: model code is single-device and
parallelism is applied from outside (vcell/train).
"""

"""Training: a plain single-process loop (`plain`) for checks and notebooks; the distributed
trainer (Lightning under Ray Train) builds on the same model contract."""

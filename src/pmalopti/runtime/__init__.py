"""Shared runtime of every trainer: device and precision, threads, the one checkpoint format,
the run log, Ctrl-C and the non-finite stop, Hugging Face load/save, atomic files."""

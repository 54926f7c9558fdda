"""Load benchmarks of the trigger plane, each measured next to a bare baseline in the same run."""

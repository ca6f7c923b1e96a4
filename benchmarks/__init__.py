"""torchclf's benchmark suite: ``python -m benchmarks.run --quick|--full`` (see docs/benchmarks.md)."""

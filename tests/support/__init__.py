"""What the tests share: real mlserver processes (harness), tiny models built offline (*_models), a moto S3
server, the reliability corpus and load, and runtime helpers (runtimes). benchmarks/ imports these too."""

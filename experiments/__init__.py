"""The study's experiments: sweep definitions (`sweeps`), the runner (`run`) and the report
(`report`). See docs/experiments.md."""

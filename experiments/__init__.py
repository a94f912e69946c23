"""The study's experiments: sweep definitions (`sweeps`), the runner (`run`), the report
(`report`) with v1's claims (`claims`) and figures (`plots`), the confirmatory study
(`confirmatory`) and the hyperparameter search (`tune`). Study-only code: the library and the
trainer never import it. See docs/experiments.md."""

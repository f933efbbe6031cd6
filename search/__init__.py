"""The search engine: CLI, backends, multi-seed confirmation, results and plots.

    python -m search.run --space eafo_default        # see --help

Nothing heavy is imported here, so `--help` and the default (Optuna) path never
import an optional backend (Ray).
"""

"""The platform's benchmarks: `scripts/bench NAME` runs one (`scripts/bench --list` names them).

Each benchmark measures a platform path against the direct path in the same run, interleaving
the two so that the noise of a small shared machine hits both alike, and reports ratios next to
absolute numbers. Results go to `bench-results/NAME-<UTC time>.{json,png}`.
"""

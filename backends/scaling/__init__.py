"""The scaling backend: sweeps of models and the scaling-law fit over them."""

from llmbuild.backends.scaling.config import ScalingConfig

from llmbuild.backend import Backend, Slot


class ScalingBackend(Backend):
    name = "scaling"
    version = "5"  # 2: fit.json says why a law was not fitted; results.md its intervals; 3: optima count attention FLOPs as the points do; 4: approach 3 refused when N or D never varies; 5: points no better than uniform left out
    Config = ScalingConfig
    inputs = (Slot("point:<stage>", "each sweep point's trained stage"),)
    outputs = (
        Slot("fit", "fitted laws with intervals, the points, compute-optimal N and D (JSON)"),
        Slot("plot", "loss against training compute with the fits (PNG)"),
    )


backend = ScalingBackend()

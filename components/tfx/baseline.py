"""The baseline of ModelExporter's contract guard: the model clients are served today.

    baseline = latest_pushed_model()
    exporter = ModelExporter(..., baseline_model=baseline.outputs["model"])
    pusher = Pusher(model=exporter.outputs["model"], ...)
    components = [..., baseline, exporter, pusher]

The Resolver reads Pusher's PushedModel artifacts from ML Metadata (any run of the
same pipeline), not Pusher's output channel: that would make ModelExporter depend
on its own downstream Pusher, a cycle.
"""

from typing import Dict, List, Optional

import ml_metadata as mlmd
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import channel, standard_artifacts

# Pusher's custom property on its PushedModel: 1 when it pushed, 0 when it found no
# blessing (then the artifact holds no model at all).
PUSHED_PROPERTY = "pushed"


class LatestPushedModelStrategy(resolver.ResolverStrategy):
    """Resolves the most recent PushedModel that Pusher actually pushed.

    TFX's LatestArtifactStrategy would pick the newest PushedModel even when its
    Pusher pushed nothing (a failed InfraValidator/Evaluator blessing), and it
    resolves to None while nothing was ever pushed, which skips the consumer. This
    strategy returns an empty list then, so ModelExporter runs on the first run and
    reports "no baseline: contract not compared".
    """

    def resolve_artifacts(
            self, store: mlmd.MetadataStore,
            input_dict: Dict[str, List[types.Artifact]]
    ) -> Optional[Dict[str, List[types.Artifact]]]:
        del store  # everything needed is on the artifacts
        result = {}
        for key, artifacts in input_dict.items():
            pushed = [a for a in artifacts
                      if a.has_custom_property(PUSHED_PROPERTY)
                      and a.get_int_custom_property(PUSHED_PROPERTY) == 1]
            result[key] = sorted(pushed, key=lambda a: a.id)[-1:]
        return result


def latest_pushed_model(resolver_id: str = "latest_pushed_model") -> resolver.Resolver:
    """A Resolver node whose ``outputs["model"]`` is the last model Pusher pushed (or none)."""
    return resolver.Resolver(
        strategy_class=LatestPushedModelStrategy,
        model=channel.Channel(type=standard_artifacts.PushedModel)).with_id(resolver_id)

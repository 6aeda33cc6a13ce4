"""The connected components of near copies placed by Beam (unrolled rounds, checked in the
pipeline) and Spark (rounds until nothing changes): the labels of the bare loop, and a clear
failure naming ``component_rounds`` when the rounds do not suffice."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from i2e_engine.dedup import components
from pipelines.beam.pipeline import BeamFlow, pipeline_options
from pipelines.local import ListFlow
from pipelines.spark.job import SparkFlow

pytestmark = pytest.mark.e2e

CHAIN = [f"v{i:03d}" for i in (5, 3, 9, 1, 7, 2, 8, 0, 6, 4)]
EDGES = list(zip(CHAIN, CHAIN[1:])) + [("x", "z"), ("y", "z")]


def _expected():
    return sorted(components.label_components(ListFlow(), EDGES, 20))


def _beam_labels(rounds):
    with beam.Pipeline(options=pipeline_options([])) as pipeline:
        labels = components.label_components(BeamFlow(pipeline), pipeline | beam.Create(EDGES), rounds)
        assert_that(labels, equal_to(_expected()))


def test_beam_unrolls_the_rounds_and_checks_the_last():
    assert _expected()[0] == ("v001", "v000") and ("z", "x") in _expected()
    _beam_labels(8)
    with pytest.raises(Exception, match="component_rounds"):
        _beam_labels(2)


def test_spark_loops_until_nothing_changes(spark):
    flow = SparkFlow(spark)
    edges = spark.sparkContext.parallelize(EDGES, 2)
    assert sorted(components.label_components(flow, edges, 20).collect()) == _expected()
    with pytest.raises(components.ComponentsNotConverged, match="component_rounds"):
        components.label_components(flow, edges, 2)
    flow.release()

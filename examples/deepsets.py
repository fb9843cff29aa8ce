"""A grouped-layout model: masked DeepSets over each collection plus the event-level branches."""

from mlaas4hep.nn import DeepSetsClassifier


def model(input_shapes):
    return DeepSetsClassifier(input_shapes, hidden=(32, 32), head=(32,))

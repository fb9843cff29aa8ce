"""Reading s3:// URLs from a real S3 API server (moto's) on 127.0.0.1."""

from __future__ import annotations

import awkward as ak
import pytest
from conftest import BUCKET, shared_file

from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import RetryPolicy
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.errors import DataError


@pytest.mark.parametrize(
    "name", ["uproot-HZZ-lz4.root", "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"]
)
def test_s3_values_equal_local(s3_bucket: object, name: str) -> None:
    local = shared_file(name)
    s3_bucket.upload_file(str(local), BUCKET, name)  # type: ignore[attr-defined]

    def read(url: str) -> ak.Array:
        with EventStream(resolve_sources(url), step_size=700, shuffle=False) as stream:
            return ak.concatenate([c.arrays for c in stream.iter_epoch(0)])

    remote, here = read(f"s3://{BUCKET}/{name}"), read(str(local))
    assert len(remote) == len(here) > 0
    assert ak.array_equal(remote, here, equal_nan=True)


def test_s3_missing_object_is_a_clear_error(s3_bucket: object) -> None:
    assert s3_bucket is not None
    with pytest.raises(DataError, match=rf"cannot open s3://{BUCKET}/absent\.root"):
        EventStream(resolve_sources(f"s3://{BUCKET}/absent.root"), retry=RetryPolicy(attempts=1))

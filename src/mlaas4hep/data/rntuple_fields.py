"""Indexing an RNTuple's field tree in one pass.

uproot 5.7 finds the children of each RNTuple field by scanning every field
record (``HasFields.fields``), so listing the fields of a wide RNTuple is
quadratic: about 2 s for a NanoAOD file's 1,313 fields, paid on the first
``keys()`` or ``arrays()`` of every opened file (scikit-hep/uproot5#1637).
:func:`index_fields` computes the same child lists with one pass over the
records and stores them where uproot caches its own, so uproot never scans.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def index_fields(ntuple: Any) -> None:
    """Fill the child-field cache of ``ntuple`` and of all its fields.

    Gives the lists uproot's ``fields`` property would compute (anonymous
    fields replaced by their own children, in record order). An uproot whose
    fields are laid out otherwise is left to compute them itself.
    """
    try:
        records = ntuple.field_records
        fields = ntuple.all_fields
        children: list[list[int]] = [[] for _ in records]
        top_level = []
        for index, record in enumerate(records):
            parent = record.parent_field_id
            if parent == index:
                top_level.append(index)
            else:
                children[parent].append(index)
        for field in [ntuple, *fields]:
            if getattr(field, "_fields", ...) is not None:
                return  # not uproot's layout as known here, or computed already
    except (AttributeError, IndexError, TypeError) as exc:
        log.debug("RNTuple fields not indexed: %s", exc)
        return

    def visible_children(fid: int) -> list[Any]:
        found = []
        for child in children[fid]:
            if fields[child].is_anonymous:
                found.extend(child_fields(child))
            else:
                found.append(fields[child])
        return found

    done: dict[int, list[Any]] = {}

    def child_fields(fid: int) -> list[Any]:
        if fid not in done:
            done[fid] = visible_children(fid)
        return done[fid]

    for fid, field in enumerate(fields):
        field._fields = child_fields(fid)
    ntuple._fields = [fields[i] for i in top_level]

"""Opening a TTree with the metadata of only the branches a job reads.

uproot deserialises the metadata of every branch when it opens a TTree: the
models of each branch, its leaves and its basket tables. For a NanoAOD-like
file of 900 to 1,600 branches that is 0.1 to 0.2 s of Python per file,
however few branches the job then reads. ROOT writes each element of a tree's
branch list with its size in front, so a branch nobody reads can be stepped
over unparsed.

:func:`read_pruned_tree` peeks at the name of every top-level branch, asks the
caller which ones it wants, and has uproot parse only those, with uproot's own
models. The result is an ordinary uproot TTree whose ``branches`` are the
chosen ones (plus the counters they point to), read and interpreted by uproot
as usual.

ROOT's streaming format refers back to earlier bytes in two ways, and both may
point into a branch that was stepped over; they are resolved on demand:

- *class tags*: a class is named where it first occurs and referred to by
  position afterwards (a kept ``TLeafF`` may point into a skipped branch for
  its class name), which is read from the buffer;
- *object pointers*: a jagged branch's leaf points to its counter's leaf
  (``Jet_pt``'s to ``nJet``'s), so the branch holding it is parsed too and
  joins the tree, exactly as if it had been chosen.

The tree's flat list of leaves (``fLeaves``) keeps the leaves of the parsed
branches only. Only plain ``TBranch`` elements are ever skipped; split objects
(``TBranchElement``) and anything unexpected are parsed as uproot always does,
and a layout this module does not recognise raises :class:`CannotPrune`, for
the caller to read the whole tree instead.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import uproot
from uproot.behaviors.TTree import TTree
from uproot.deserialization import read_object_any
from uproot.models.TObjArray import Model_TObjArray as _UprootTObjArray
from uproot.source.cursor import Cursor

ChooseBranches = Callable[[Sequence[str]], Collection[str]]
"""Given the names of a tree's top-level plain branches in file order, the ones
to parse (other kinds of branch are always parsed)."""

_UINT32 = struct.Struct(">I")
_INT16 = struct.Struct(">h")
_TWO_INT32 = struct.Struct(">ii")
_TWO_UINT32 = struct.Struct(">II")
_BYTE_COUNT = int(uproot.const.kByteCountMask)
_NEW_CLASS = int(uproot.const.kNewClassTag)
_CLASS_MASK = int(uproot.const.kClassMask)
_MAP_OFFSET = int(uproot.const.kMapOffset)
_VERSION_BYTE_COUNT = int(uproot.const.kByteCountVMask)
_IS_REFERENCED = int(uproot.const.kIsReferenced)


class CannotPrune(Exception):
    """The tree's branch list is laid out in a way this module does not step over."""


@dataclass
class _Element:
    """One entry of the tree's branch list: where it lies and what it is."""

    begin: int  # cursor displacement of its byte count
    end: int  # displacement just past it
    name: str | None  # the branch name, peeked for plain TBranch elements only


class _Elements:
    """The branch list's elements, parsed only when wanted or pointed to.

    ``refs`` is the reference table (``Cursor.refs``) of the whole tree read:
    what was read, keyed by position, which also looks up the class tags and
    objects lying in elements not parsed (yet) when uproot asks for them. As in
    a full read, only positions before the element being parsed can be
    referred to; later ones stay unresolved (uproot then skips them).
    """

    def __init__(self, chunk: Any, context: dict[str, Any], file: Any, selffile: Any) -> None:
        self.chunk = chunk
        self.context = context
        self.file = file
        self.selffile = selffile
        self.origin = 0
        # the tree's decompressed bytes, peeked at without uproot's cursors
        self.data = bytes(chunk.raw_data)
        self.class_names: dict[int, str] = {}  # new-class tag position -> class name
        self.items: list[_Element] = []
        self.begins: list[int] = []
        self.parsed: dict[int, Any] = {}  # element begin -> branch model
        self.parent: Any = None
        self.current = 0  # index of the element being parsed; len(items) once done
        self.pull_objects = False  # parse elements that objects point into
        self.refs = _References(self)

    def element_at(self, displacement: int) -> int | None:
        """Index of the element holding ``displacement``, if one does."""
        index = bisect.bisect_right(self.begins, displacement) - 1
        if index >= 0 and displacement < self.items[index].end:
            return index
        return None

    def parse(self, index: int) -> Any:
        """The branch model of element ``index``, parsing it on first use."""
        element = self.items[index]
        if element.begin not in self.parsed:
            cursor = Cursor(self.origin + element.begin, origin=self.origin, refs=self.refs)
            previous, self.current = self.current, index
            try:
                branch = read_object_any(
                    self.chunk, cursor, self.context, self.file, self.selffile, self.parent
                )
            finally:
                self.current = previous
            if cursor.displacement() != element.end:
                raise CannotPrune(f"branch-list element {index} does not end where its size says")
            self.parsed[element.begin] = branch
        return self.parsed[element.begin]


class _References(dict[int, Any]):
    """``Cursor.refs`` that finds classes and objects in elements not parsed.

    uproot tests membership (``ref in cursor.refs``) before every lookup, so
    that is where an unknown position is resolved.
    """

    def __init__(self, elements: _Elements) -> None:
        super().__init__()
        self.elements = elements

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, Integral) and self._resolve(int(key))

    def _resolve(self, key: int) -> bool:
        elements = self.elements
        displacement = key - _MAP_OFFSET
        index = elements.element_at(displacement)
        if index is None or index >= elements.current:
            return False
        if elements.items[index].begin in elements.parsed:
            return False  # parsed: anything it defines is already known
        first = _uint32_at(elements, displacement)
        if first == _NEW_CLASS:
            self[key] = elements.file.class_named(_class_at(elements, displacement))
            return True
        if elements.pull_objects and first & _BYTE_COUNT:
            elements.parse(index)
            return dict.__contains__(self, key)
        return False


def _offset(elements: _Elements, displacement: int) -> int:
    """Where ``displacement`` (from the cursor origin) lies in ``elements.data``."""
    return int(elements.origin + displacement - elements.chunk.start)


def _uint32_at(elements: _Elements, displacement: int) -> int:
    """The 4-byte unsigned integer at ``displacement`` of the tree's buffer."""
    return int(_UINT32.unpack_from(elements.data, _offset(elements, displacement))[0])


def _c_string(data: bytes, offset: int) -> tuple[str, int]:
    """The null-terminated string at ``offset``, and the offset past it."""
    stop = data.index(0, offset)
    return data[offset:stop].decode(errors="surrogateescape"), stop + 1


def _class_at(elements: _Elements, displacement: int) -> str:
    """The class name that the new-class tag at ``displacement`` defines."""
    if displacement not in elements.class_names:
        if _uint32_at(elements, displacement) != _NEW_CLASS:
            raise CannotPrune("a class tag that points to no class name")
        offset = _offset(elements, displacement) + 4
        elements.class_names[displacement] = _c_string(elements.data, offset)[0]
    return elements.class_names[displacement]


def _past_version(data: bytes, offset: int) -> int:
    """The offset past a streamer's version header, with or without its byte count."""
    return offset + (6 if _UINT32.unpack_from(data, offset)[0] & _BYTE_COUNT else 2)


def _branch_name(data: bytes, offset: int) -> str:
    """The name of the TBranch whose streamed members start at ``offset``."""
    offset = _past_version(data, offset)  # TBranch
    offset = _past_version(data, offset)  # its TNamed base
    version = _INT16.unpack_from(data, offset)[0]  # TObject
    offset += 6 if version & _VERSION_BYTE_COUNT else 2
    bits = _UINT32.unpack_from(data, offset + 4)[0]  # after fUniqueID
    offset += 10 if bits & _IS_REFERENCED else 8
    size = data[offset]
    offset += 1
    if size == 255:
        size = _UINT32.unpack_from(data, offset)[0]
        offset += 4
    return data[offset : offset + size].decode(errors="surrogateescape")


class _PruningFile:
    """The ``file`` argument of uproot's reads while a pruned tree is read.

    It hands out :class:`Model_TObjArray` for ``TObjArray`` and carries the
    caller's choice; everything else is the real file's. The models keep the
    real file (uproot's ``selffile``), so the tree reads data as usual.
    """

    def __init__(self, file: Any, choose: ChooseBranches) -> None:
        self._file = file
        self.choose = choose

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def class_named(self, classname: str, version: Any = None) -> Any:
        if classname == "TObjArray":
            return Model_TObjArray
        return self._file.class_named(classname, version)


# uproot takes a model's ROOT class name from its Python name, "Model_<class>".
class Model_TObjArray(_UprootTObjArray):  # type: ignore[misc]  # uproot is untyped
    """uproot's ``TObjArray``, which prunes a tree's branch list when asked to.

    Only the two arrays of the tree being read through a :class:`_PruningFile`
    differ from uproot's: the branch list (``fBranches``, read first) keeps the
    chosen branches, and the list of leaves (``fLeaves``) the leaves of the
    branches parsed.
    """

    _data: list[Any]
    listed_names: list[str]

    def read_members(self, chunk: Any, cursor: Cursor, context: Any, file: Any) -> None:
        tree = self._parent
        if not (isinstance(file, _PruningFile) and isinstance(tree, TTree)):
            super().read_members(chunk, cursor, context, file)
        elif "fBranches" not in tree._members:
            self._read_chosen_branches(chunk, cursor, context, file)
        else:
            # Leaves of the branches stepped over are unresolved pointers (None).
            super().read_members(chunk, cursor, context, file)
            self._data = [leaf for leaf in self._data if leaf is not None]

    def _read_chosen_branches(
        self, chunk: Any, cursor: Cursor, context: Any, file: _PruningFile
    ) -> None:
        if self.is_memberwise:
            raise CannotPrune("a memberwise branch list")
        self._bases.append(
            uproot.models.TObject.Model_TObject.read(
                chunk, cursor, context, file, self._file, self._parent, concrete=self.concrete
            )
        )
        self._members["fName"] = cursor.string(chunk, context)
        self._members["fSize"], self._members["fLowerBound"] = cursor.fields(
            chunk, _TWO_INT32, context
        )
        if not isinstance(cursor.refs, _References):
            raise CannotPrune("the tree was not read with a pruning reference table")
        elements = cursor.refs.elements
        elements.origin = cursor.origin
        elements.parent = self._parent
        for _ in range(self._members["fSize"]):
            element = _peek(elements, cursor.displacement())
            elements.items.append(element)
            cursor.move_to(cursor.origin + element.end)
        elements.begins = [e.begin for e in elements.items]
        names = [e.name for e in elements.items if e.name is not None]
        chosen = set(file.choose(names))

        elements.pull_objects = True
        for index, element in enumerate(elements.items):
            if element.name is None or element.name in chosen:
                elements.parse(index)
        elements.pull_objects = False
        elements.current = len(elements.items)
        self._data = [
            elements.parsed[e.begin] for e in elements.items if e.begin in elements.parsed
        ]
        self.listed_names = [
            e.name if e.name is not None else str(elements.parsed[e.begin].member("fName"))
            for e in elements.items
        ]


def _peek(elements: _Elements, begin: int) -> _Element:
    """What the branch-list element at displacement ``begin`` is, and where it ends."""
    data = elements.data
    offset = _offset(elements, begin)
    byte_count, tag = _TWO_UINT32.unpack_from(data, offset)
    if not byte_count & _BYTE_COUNT:
        raise CannotPrune("a branch-list element without a byte count")
    end = begin + (byte_count & ~_BYTE_COUNT) + 4
    offset += 8
    if tag == _NEW_CLASS:
        classname, offset = _c_string(data, offset)
        elements.class_names[begin + 4] = classname
    elif tag & _CLASS_MASK:
        classname = _class_at(elements, (tag & ~_CLASS_MASK) - _MAP_OFFSET)
    else:
        raise CannotPrune("a branch-list element that is a reference")
    name = _branch_name(data, offset) if classname == "TBranch" else None
    return _Element(begin, end, name)


def read_pruned_tree(directory: Any, name: str, choose: ChooseBranches) -> Any:
    """Read TTree ``name`` of ``directory`` with only the branches ``choose`` picks.

    Raises :class:`CannotPrune` where the layout is not one this module steps
    over, and uproot's own errors for a damaged tree.
    """
    key = directory.key(name)
    if key.fClassName != "TTree":
        raise CannotPrune(f"{name} is a {key.fClassName}, not a TTree")
    chunk, cursor = key.get_uncompressed_chunk_cursor()
    context: dict[str, Any] = {"breadcrumbs": (), "TKey": key}
    real_file = directory.file
    file = _PruningFile(real_file, choose)
    elements = _Elements(chunk, context, file, real_file)
    cursor = Cursor(cursor.index, origin=cursor.origin, refs=elements.refs)
    tree = real_file.class_named(key.fClassName).read(chunk, cursor, context, file, real_file, key)
    if elements.parent is None:
        raise CannotPrune("the tree's branch list was not read")
    return tree


def no_branches(_names: Sequence[str]) -> Collection[str]:
    """A :data:`ChooseBranches` for callers that need only a tree's entry count."""
    return ()


def listed_branch_names(tree: Any) -> list[str]:
    """Names of a TTree's top-level branches, including those a pruned read skipped."""
    listed = getattr(tree.member("fBranches"), "listed_names", None)
    return list(listed) if listed is not None else [str(b.name) for b in tree.branches]

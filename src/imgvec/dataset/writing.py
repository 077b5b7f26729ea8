"""Starting a run that writes an output: new, resumed or overwritten, and what imgvec may delete.

imgvec deletes only what it wrote: its metadata, its lock, its parts, its index and temporaries
left by a killed writer. A folder holding anything else is never replaced, an output is never
resumed with another model, and no output may overlap its inputs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow.fs as pafs

from imgvec.base.paths import overlaps
from imgvec.dataset import names
from imgvec.dataset.lock import Lock, now
from imgvec.dataset.output import FORMAT, FeatureDataset, OutputError

DELETERS = 32  # delete requests at once
OWN_FOLDERS = {names.DUPES: names.is_dupes_file, names.INPUTS: names.is_inputs_file}  # emptied file by file


@contextmanager
def held_for_writing(dataset: FeatureDataset, made_by: dict, *, resume: bool, overwrite: bool):
    """Hold `dataset` for one run that writes features made by `made_by` (model, weights)."""
    if dataset.where.is_file():
        raise OutputError(f"output {dataset.location} is a file; give a folder")
    Lock(dataset.where.child(names.LOCK)).check_free()  # a busy output is the first thing to say
    present = [n for n in dataset.names() if n != names.LOCK]
    held = None
    if present:
        if names.METADATA not in present:
            raise OutputError(f"output {dataset.location} holds files but is not an imgvec output "
                              f"(no {names.METADATA}); give a new or empty folder")
        if overwrite:
            _check_only_ours(dataset, present)
        elif not resume:
            raise OutputError(f"output {dataset.location} already exists; pass --resume to complete it "
                              "or --overwrite to replace it")
        else:
            held = dataset.metadata()
            _check_same_maker(dataset, held, made_by)
    new, emptied = not dataset.where.is_folder(), False
    dataset.where.make_folder()
    try:
        with dataset.locked():
            if overwrite and names.INDEX in present:
                _delete_index(dataset)
            for folder, ours in OWN_FOLDERS.items():
                if overwrite and folder in present:
                    remove_own(dataset.where.child(folder), ours)
            delete_all([dataset.where.child(n) for n in present  # a temporary: what a killed run was writing
                        if n not in (names.INDEX, *OWN_FOLDERS) and (overwrite or names.is_temporary(n))])
            if held is None:
                dataset.write_metadata({**made_by, "created": now()})
            elif held["format"] != FORMAT:  # an older output: the parts added now are of this format
                dataset.write_metadata({**held, "format": FORMAT})
            try:
                yield dataset
            except BaseException:
                if held is None and not [n for n in dataset.names()
                                         if n not in (names.METADATA, names.LOCK, names.INPUTS)]:
                    # A new output that got nothing (the run stopped before its job: a cluster's executors that
                    # lack imgvec, say): its metadata and listings go, so that the same command can simply run again.
                    remove_own(dataset.where.child(names.INPUTS), names.is_inputs_file)
                    dataset.where.child(names.METADATA).delete()
                    emptied = True
                raise
    finally:
        if emptied and new and not dataset.names():
            dataset.where.delete_folder()


def check_apart(dataset: FeatureDataset, inputs: list[str]) -> None:
    """OUTPUT must not be an input, lie inside one, or hold one: its own parts would be read as images."""
    for text in inputs:
        if overlaps(dataset.location, text):
            raise OutputError(f"output {dataset.location} overlaps input {text}; write the output to a folder "
                              "outside the inputs")


def _check_only_ours(dataset: FeatureDataset, present: list[str]) -> None:
    foreign = [n for n in present if n not in (names.METADATA, names.INDEX, *OWN_FOLDERS) and not names.is_part(n)
               and not names.is_temporary(n)]
    if names.INDEX in present:
        foreign += [f"{names.INDEX}/{n}" for n in _index_names(dataset) if not names.is_index_file(n)]
    for folder, ours in OWN_FOLDERS.items():
        if folder in present:
            foreign += [f"{folder}/{n}" for n in _files_under(dataset.where.child(folder))
                        if not ours(n.rpartition("/")[2])]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"output {dataset.location} also holds files imgvec did not write ({shown}); "
                          "--overwrite replaces only an imgvec output: give a new folder")


def _check_same_maker(dataset: FeatureDataset, held: dict, made_by: dict) -> None:
    for key in ("model", "weights_sha256", "dim"):
        if made_by.get(key) is not None and held.get(key) != made_by[key]:
            raise OutputError(
                f"output {dataset.location} holds features from {held.get('model')} ({held.get('weights')}); "
                f"resuming with {made_by['model']} ({made_by['weights']}) would mix two models: "
                "use another output or --overwrite")
    if held.get("columns", []) != made_by.get("columns", []):
        raise OutputError(f"output {dataset.location} keeps the input columns {held.get('columns', [])}; resuming "
                          f"with {made_by.get('columns', [])} would mix two layouts: keep the same columns "
                          "(--keep-columns) or use another output")


def _index_names(dataset: FeatureDataset) -> list[str]:
    return sorted(e.base_name for e in dataset.where.child(names.INDEX).entries())


def _delete_index(dataset: FeatureDataset) -> None:
    folder = dataset.where.child(names.INDEX)
    delete_all([folder.child(name) for name in _index_names(dataset)])  # all imgvec's: checked by _check_only_ours
    folder.delete_folder()


def _files_under(folder) -> list[str]:
    """The names of every file under `folder`, relative to it."""
    found = []
    for entry in folder.entries():
        if entry.type == pafs.FileType.Directory:
            found += [f"{entry.base_name}/{n}" for n in _files_under(folder.child(entry.base_name))]
        else:
            found.append(entry.base_name)
    return found


def remove_own(folder, ours) -> None:
    """Every file under `folder` whose name `ours` says imgvec wrote, named one by one (never a prefix), and the
    folders left empty; a file it did not write stays, and its folders with it."""
    entries = folder.entries()
    delete_all([folder.child(e.base_name) for e in entries if e.type != pafs.FileType.Directory and ours(e.base_name)])
    for entry in entries:
        if entry.type == pafs.FileType.Directory:
            remove_own(folder.child(entry.base_name), ours)
    if folder.is_folder() and not folder.entries():
        folder.delete_folder()


def delete_all(files: list) -> None:
    """Delete these files (storage.Location), DELETERS at a time: an object store answers each request in tens of
    milliseconds, and an output at 10^8 images has ~2x10^5 parts. Only ever files named one by one: never a prefix,
    which would take a file written there meanwhile by someone else."""
    with ThreadPoolExecutor(max(1, min(DELETERS, len(files))), thread_name_prefix="imgvec-delete") as pool:
        list(pool.map(lambda where: where.delete(), files))

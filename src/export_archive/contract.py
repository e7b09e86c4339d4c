"""The serving contract of a SavedModel, and whether a new model breaks the old one's clients.

Clients call a served model by signature name, input keys, dtypes, shapes and
output keys. TF Serving loads a retrained model that changed any of them without
complaint, and the clients start failing. `compare` tells, before the new model
is published, whether it still answers what the old one answered:

* the static half (`diff_contracts`): the two signature maps, read from
  ``saved_model.pb`` (no Keras, no variables), compared per signature: method
  name, and each input and output (key, dtype, shape);
* the behavioural half (`replay_warmup`): the old model's warmup requests
  (``assets.extra/tf_serving_warmup_requests``, i.e. what its clients send)
  replayed against both models through the serving check's TF-Serving-like
  process; every request must still succeed with outputs of the same keys,
  dtypes and shapes.

Example::

    diff = compare("serving/1700000000", "exported/")
    print(diff.format())          # a review-style diff, one line per change
    if diff.breaking:             # a breaking change not in `allow`
        raise BreakingChange(diff)

Every change has an id ``KIND:PATH`` (``input_renamed:serve/inputs/x``); the
config's ``contract.allow`` list names intentional breaks by those ids
(shell-style wildcards allowed). docs/contract.md gives each rule and its reason.

This module imports no TensorFlow at import time (the config parser uses its
change kinds); reading a SavedModel loads TensorFlow on first use.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from export_archive.constants import (BREAKING_KINDS, CHANGE_KINDS, COMPATIBLE_KINDS,  # noqa: F401
                                      DEFAULT_SIGNATURE, WARMUP_FILE)
from export_archive.rows import CheckRow
from export_archive.specs import TensorSpec

NO_BASELINE = "no baseline: contract not compared"

STATUS_NOT_COMPARED = "not compared"
STATUS_COMPATIBLE = "compatible"
STATUS_BREAKING = "breaking"


class BreakingChange(RuntimeError):
    """The new model breaks the serving contract of the baseline (``on_breaking: fail``)."""

    def __init__(self, diff: "ContractDiff"):
        self.diff = diff
        super().__init__(f"{diff.summary()}\n{diff.format()}")


# ---- the contract


@dataclasses.dataclass(frozen=True)
class SignatureContract:
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def read_contract(export_dir: str) -> Dict[str, SignatureContract]:
    """The signature map of a SavedModel's ``serve`` MetaGraph, as TF Serving exposes it."""
    # Imports TensorFlow, which this module must not at import (module docstring).
    from export_archive import saved_model_io  # pylint: disable=import-outside-toplevel

    def tensor(info) -> TensorSpec:
        spec = TensorSpec.from_text(saved_model_io.tensor_info_text(info))
        encoding = info.WhichOneof("encoding")
        # TensorInfo's oneof says "name" for a plain tensor, which is a dense one.
        return spec if encoding in (None, "name") else dataclasses.replace(spec, encoding=encoding)

    signatures = saved_model_io.signature_defs(saved_model_io.read_serve_meta_graph(export_dir))
    return {name: SignatureContract(sig.method_name,
                                    {k: tensor(v) for k, v in sig.inputs.items()},
                                    {k: tensor(v) for k, v in sig.outputs.items()})
            for name, sig in signatures.items()}


# ---- the diff


@dataclasses.dataclass
class Change:
    """One difference between the baseline's contract and the new one's."""
    kind: str
    path: str            # SIGNATURE, SIGNATURE/inputs/KEY, SIGNATURE/outputs/KEY, SIGNATURE/warmup
    old: str = ""
    new: str = ""
    detail: str = ""
    allowed: bool = False  # a breaking change named in `contract.allow`

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.path}"

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING_KINDS

    @property
    def verdict(self) -> str:
        if not self.breaking:
            return "compatible"
        return "breaking (allowed)" if self.allowed else "BREAKING"

    def to_json(self) -> Dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "path": self.path, "old": self.old,
                "new": self.new, "detail": self.detail, "breaking": self.breaking,
                "allowed": self.allowed}


@dataclasses.dataclass
class ContractDiff:
    """The changes from `baseline` to `candidate`, sorted into compatible and breaking."""
    baseline: str
    candidate: str
    changes: List[Change]
    # Warmup requests of the baseline replayed on the new model; None: the
    # baseline has no warmup file (or the replay was not asked for).
    replayed: Optional[int] = None
    unused_allow: List[str] = dataclasses.field(default_factory=list)
    replay_asked: bool = True

    @property
    def breaking_changes(self) -> List[Change]:
        return [c for c in self.changes if c.breaking and not c.allowed]

    @property
    def breaking(self) -> bool:
        return bool(self.breaking_changes)

    @property
    def status(self) -> str:
        return STATUS_BREAKING if self.breaking else STATUS_COMPATIBLE

    def summary(self) -> str:
        """One line: the verdict, the counts, and the breaking change ids."""
        allowed = [c for c in self.changes if c.breaking and c.allowed]
        compatible = [c for c in self.changes if not c.breaking]
        counts = (f"{len(self.breaking_changes)} breaking, {len(allowed)} allowed, "
                  f"{len(compatible)} compatible change(s)")
        if not self.replay_asked:
            replay = "warmup replay not asked for"
        elif self.replayed is None:
            replay = "no warmup requests to replay"
        else:
            replay = f"{self.replayed} warmup request(s) replayed"
        text = f"contract {self.status} with baseline {self.baseline}: {counts}; {replay}"
        if self.breaking:
            text += ": " + ", ".join(c.id for c in self.breaking_changes)
        return text

    def format(self) -> str:
        """A review-style diff: ``-`` removed, ``+`` added, ``~`` changed, ``!`` failed."""
        lines = [f"--- baseline  {self.baseline}", f"+++ candidate {self.candidate}"]
        for c in self.changes:
            if c.old and c.new:
                what = f"{c.old} -> {c.new}"
            else:
                what = c.old or c.new
            lines.append(f"{_marker(c.kind)} {c.path}: {what}".rstrip(": ")
                         + f"  [{c.kind}, {c.verdict}]"
                         + (f"\n    {c.detail}" if c.detail else ""))
        if not self.changes:
            lines.append("  (no changes)")
        for entry in self.unused_allow:
            lines.append(f"  note: contract.allow entry {entry!r} matches no change")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"status": self.status, "summary": self.summary(), "baseline": self.baseline,
                "candidate": self.candidate, "breaking": self.breaking,
                "replayed": self.replayed, "unused_allow": list(self.unused_allow),
                "changes": [c.to_json() for c in self.changes]}


def not_compared() -> Dict[str, Any]:
    """The `to_json` shape for an export without a baseline (a pipeline's first run)."""
    return {"status": STATUS_NOT_COMPARED, "summary": NO_BASELINE, "baseline": None,
            "breaking": False, "replayed": None, "changes": []}


def _marker(kind: str) -> str:
    if kind.endswith("_added"):
        return "+"
    if kind.endswith("_removed"):
        return "-"
    if kind in ("request_failed", "response_changed"):
        return "!"
    return "~"


def diff_contracts(old: Mapping[str, SignatureContract],
                   new: Mapping[str, SignatureContract]) -> List[Change]:
    """The static diff of two signature maps (see the module docstring)."""
    changes: List[Change] = []
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    renamed = _renames(removed, added, old, new)
    for name in removed:
        if name in renamed:
            changes.append(Change("signature_renamed", name, name, renamed[name],
                                  "same contract under a new name; clients call the old one"))
        else:
            changes.append(Change("signature_removed", name, _sig_text(old[name])))
    for name in added:
        if name not in renamed.values():
            changes.append(Change("signature_added", name, new=_sig_text(new[name])))
    changes += _default_change(old, new)
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if a.method_name != b.method_name:
            changes.append(Change("method_changed", name, a.method_name, b.method_name))
        changes += _side_changes(name, "input", a.inputs, b.inputs)
        changes += _side_changes(name, "output", a.outputs, b.outputs)
    return changes


def _sig_text(sig: SignatureContract) -> str:
    ins = ", ".join(f"{k}: {v}" for k, v in sorted(sig.inputs.items()))
    outs = ", ".join(f"{k}: {v}" for k, v in sorted(sig.outputs.items()))
    return f"{sig.method_name.rsplit('/', 1)[-1]}({ins}) -> ({outs})"


def _renames(removed: Sequence[str], added: Sequence[str], old: Mapping[str, Any],
             new: Mapping[str, Any]) -> Dict[str, str]:
    """Pairs a removed key with an added one when their specs match one to one.

    Only a label for the reader: a rename breaks clients exactly as a removal does.
    """
    pairs = {}
    for r in removed:
        same = [a for a in added if new[a] == old[r]]
        if len(same) == 1 and [x for x in removed if old[x] == new[same[0]]] == [r]:
            pairs[r] = same[0]
    return pairs


def _default_change(old, new) -> List[Change]:
    """`serving_default` now aliasing another endpoint's (different) contract."""
    if DEFAULT_SIGNATURE not in old or DEFAULT_SIGNATURE not in new:
        return []  # its removal or addition is reported as a signature change
    if old[DEFAULT_SIGNATURE] == new[DEFAULT_SIGNATURE]:
        return []

    def aliases(sigs):
        return sorted(n for n, s in sigs.items()
                      if n != DEFAULT_SIGNATURE and s == sigs[DEFAULT_SIGNATURE])
    before, after = aliases(old), aliases(new)
    if before == after:
        return []  # its own contract changed; the input/output changes say how
    return [Change("default_changed", DEFAULT_SIGNATURE,
                   "contract of " + (", ".join(before) or "its own"),
                   "contract of " + (", ".join(after) or "its own"),
                   "requests that name no signature (REST and gRPC default) now get "
                   "another contract")]


def _side_changes(sig: str, side: str, old: Mapping[str, TensorSpec],
                  new: Mapping[str, TensorSpec]) -> List[Change]:
    changes = []
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    renamed = _renames(removed, added, old, new)
    base = f"{sig}/{side}s"
    for key in removed:
        if key in renamed:
            changes.append(Change(f"{side}_renamed", f"{base}/{key}",
                                  f"{key}: {old[key]}", f"{renamed[key]}: {new[renamed[key]]}"))
        else:
            changes.append(Change(f"{side}_removed", f"{base}/{key}", str(old[key])))
    for key in added:
        if key not in renamed.values():
            changes.append(Change(f"{side}_added", f"{base}/{key}", new=str(new[key]),
                                  detail=("a new required input: Predict needs every "
                                          "signature input, and old requests lack it")
                                  if side == "input" else ""))
    if side == "output" and len(old) == 1 and len(new) > 1:
        # TF Serving's REST API names no output when a signature has exactly one:
        # row format answers {"predictions": [value, ...]}, columnar {"outputs": value}.
        # With two or more, every prediction becomes an object keyed by output name,
        # so a REST client of the single output breaks (gRPC clients do not).
        changes.append(Change("single_output_widened", base, f"1 output ({next(iter(old))})",
                              f"{len(new)} outputs ({', '.join(sorted(new))})",
                              "REST answers change shape: each prediction becomes an object "
                              "keyed by output name"))
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        path = f"{base}/{key}"
        if a.encoding != b.encoding:
            changes.append(Change(f"{side}_encoding_changed", path, str(a), str(b)))
        elif a.dtype != b.dtype:
            changes.append(Change(f"{side}_dtype_changed", path, str(a), str(b)))
        elif a.shape != b.shape:
            changes.append(Change(f"{side}_shape_{shape_change(a.shape, b.shape)}",
                                  path, str(a), str(b)))
    return changes


def shape_change(old: Optional[Tuple[Optional[int], ...]],
                 new: Optional[Tuple[Optional[int], ...]]) -> str:
    """``relaxed`` (fixed dims became None, or the rank became unknown), ``narrowed``
    (the reverse) or ``changed`` (a rank or a fixed size differs)."""
    if new is None:
        return "relaxed"
    if old is None:
        return "narrowed"
    if len(old) != len(new):
        return "changed"
    kinds = set()
    for a, b in zip(old, new):
        if a == b:
            continue
        if a is not None and b is not None:
            return "changed"
        kinds.add("relaxed" if b is None else "narrowed")
    return "narrowed" if "narrowed" in kinds else "relaxed"


# ---- the behavioural half: the old clients' requests


def replay_warmup(baseline_dir: str, candidate_dir: str) -> Tuple[Optional[int], List[Change]]:
    """Replays the baseline's warmup requests on both models.

    Both run through `check.run_contract` (TF Serving's loader and tensor-name
    calls, in a process without Keras), in parallel. A request the *baseline*
    cannot answer is not a contract of anyone's and is skipped. Returns the
    number of requests replayed (None: no warmup file) and the breaking changes.
    """
    # Import TensorFlow, which this module must not at import (module docstring).
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from export_archive import check, saved_model_io  # pylint: disable=import-outside-toplevel

    path = os.path.join(baseline_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return None, []
    logs = saved_model_io.read_prediction_logs(path)
    if not logs:
        return 0, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        old_run, new_run = (pool.submit(check.run_contract, d, logs)
                            for d in (baseline_dir, candidate_dir))
        old_answers = _answers(old_run.result(), len(logs))
        new_answers = _answers(new_run.result(), len(logs))
    found: Dict[str, Change] = {}
    requests: Dict[str, List[int]] = {}

    def note(kind: str, path: str, index: int, detail: str = "", old: str = "",
             new: str = ""):
        found.setdefault(f"{kind}:{path}", Change(kind, path, old, new, detail))
        requests.setdefault(f"{kind}:{path}", []).append(index)

    for i, log in enumerate(logs):
        signature = saved_model_io.signature_name(log)
        old_ok, old_out = old_answers[i]
        new_ok, new_out = new_answers[i]
        if not old_ok:
            continue
        if not new_ok:
            note("request_failed", f"{signature}/warmup", i, new_out)
            continue
        for key, spec in sorted(old_out.items()):
            if new_out.get(key) != spec:
                note("response_changed", f"{signature}/outputs/{key}", i,
                     old=spec, new=new_out.get(key) or "missing")
    for key, change in found.items():
        where = f"warmup request(s) {', '.join(map(str, requests[key]))} of the baseline"
        change.detail = f"{where}: {change.detail}" if change.detail else where
    return len(logs), list(found.values())


def _answers(contract: Dict[str, Any], count: int) -> List[Tuple[bool, Any]]:
    """Per request: (True, {output key: "dtype[shape]"}) or (False, why it failed)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # as in read_contract
    rows: List[CheckRow] = contract["results"]
    runs = [r for r in rows if r.check == "run"]
    if len(runs) != count:  # the model did not load: every request fails the same way
        # Model-wide failures (ops, load): the check names it, the endpoint would be empty.
        why = "; ".join(f"{r.check}: {r.detail}" for r in rows
                        if not r.passed) or "the model did not run the requests"
        return [(False, why)] * count
    responses = iter(contract["responses"])
    out = []
    for run in runs:
        if not run.passed:
            out.append((False, run.detail))
            continue
        outputs = next(responses).predict_log.response.outputs
        out.append((True, {k: _value_text(tf.make_ndarray(v)) for k, v in outputs.items()}))
    return out


def _value_text(value) -> str:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # as in read_contract
    dtype = "string" if value.dtype.kind in "OSU" else tf.as_dtype(value.dtype).name
    return str(TensorSpec(dtype, tuple(int(d) for d in value.shape)))


# ---- the whole comparison


def mark_allowed(changes: Iterable[Change], allow: Sequence[str]) -> List[str]:
    """Marks breaking changes named in `allow`; returns the entries that matched nothing."""
    used = set()
    for change in changes:
        if not change.breaking:
            continue
        for entry in allow:
            if fnmatch.fnmatchcase(change.id, entry):
                change.allowed = True
                used.add(entry)
    return [entry for entry in allow if entry not in used]


def compare(baseline_dir: str, candidate_dir: str, allow: Sequence[str] = (),
            replay: bool = True) -> ContractDiff:
    """Compares the candidate's serving contract with the baseline's (static + replay)."""
    changes = diff_contracts(read_contract(baseline_dir), read_contract(candidate_dir))
    replayed = None
    if replay:
        replayed, behavioural = replay_warmup(baseline_dir, candidate_dir)
        changes += behavioural
    unused = mark_allowed(changes, allow)
    return ContractDiff(baseline_dir, candidate_dir, changes, replayed, unused, replay)

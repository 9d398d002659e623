"""Op-level profiles: where the time of one inference goes, per node and per op type.

Two sources give the same structure (:class:`OpProfile`):

- **On a device** (and with a host ``benchmark_model`` binary): the runtime's
  own profiler. TFLite's stock ``benchmark_model --enable_op_profiling=true``
  times every node of every profiled run and prints, after the line
  ``Operator-wise Profiling Info for Regular Benchmark Runs:``, a ``Run
  Order`` table (one row per node: node type, first and average time in ms,
  share of the total, times called, name), a ``Top by Computation Time``
  table, ``Number of nodes executed: N`` and a ``Summary by node type``
  table. :func:`parse_benchmark_profile` reads them. Delegate nodes are rows
  like any other, under the type the runtime gives them (e.g.
  ``TfLiteXNNPackDelegate`` for an XNNPACK partition, ``GqDelegate`` for a
  GQ op taken by our delegate); the type string is kept as printed.
- **On the host** (:func:`profile_host`): LiteRT's Python interpreter has no
  op profiler (no profiler hook is exposed), so each operator of subgraph 0
  is timed *in isolation*: it is written into a one-operator model (its
  constant inputs kept, its other inputs made the model's inputs, its
  outputs the model's outputs), opened with ``converters.make_interpreter``
  (the GQ delegate loaded, so ``GQ_*`` ops run as they do in the full
  model), fed the values its inputs hold in a real run of the full model,
  and invoked in a fresh random order each run among the other nodes, the
  whole model and an empty model (no operator). A node's time is the median of its invokes *minus*
  the median invoke of the empty model, which is the fixed cost of one
  ``invoke()`` call (Python binding, interpreter entry and exit) that the
  node's own model also pays. The whole model's time is computed the same
  way, so ``sum of nodes`` vs ``whole graph`` shows what the runtime spends
  between and around the nodes (or, when the sum is larger, what isolation
  costs each node: cold caches, per-invoke work of a delegate; XNNPACK runs
  a chain of builtin ops as one partition in the full model, but each of
  them alone pays its own dispatch). The host profile lists the model's own
  operators (``GQ_FULLY_CONNECTED``, ``FULLY_CONNECTED``, ...), not the
  runtime's delegate partitions.

Example:
    >>> profile = parse_benchmark_profile(open("logs/enc.profile.txt").read())
    >>> print(format_profile(profile))
    >>> host = profile_host("encoder.tflite", runs=200)
    >>> [n.type for n in host.nodes]
    ['RESHAPE', 'GQ_LSTM', 'RESHAPE', 'GQ_LSTM', 'GQ_FULLY_CONNECTED']
"""

from __future__ import annotations

import copy
import gc
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from android_bench.errors import BenchError

__all__ = ["NodeTime", "TypeTime", "OpProfile", "parse_benchmark_profile", "profile_host", "format_profile",
           "summarize_types", "RUN_PROFILE_HEADER"]

RUN_PROFILE_HEADER = "Operator-wise Profiling Info for Regular Benchmark Runs:"
_INIT_PROFILE_HEADER = "Profiling Info for Benchmark Initialization:"
_PREFIX = re.compile(r"^(INFO|WARN|WARNING|ERROR|VERBOSE):\s?")
_TITLE = re.compile(r"=+\s*(.+?)\s*=+")
_SUBGRAPH = re.compile(r"Subgraph \(index: (\d+)[^)]*\) profile:")
_NODE_INDEX = re.compile(r":(\d+)$")
_NODES_EXECUTED = re.compile(r"Number of nodes executed:\s*(\d+)")
_TIMINGS = re.compile(r"(?:Subgraph \(index: (\d+)[^)]*\)\s*)?Timings \(microseconds\):\s*(.*)")
_SEED = 0


@dataclass
class NodeTime:
    """One node of a profile.

    Attributes:
        order: Position in the run order (0: the node that ran first).
        index: The node's index in the runtime's execution plan (the ``:N``
            that ends the profiler's node name; on the host, the operator's
            index in subgraph 0), or None when the name carries none.
        type: The node type as the runtime names it (``FULLY_CONNECTED``,
            ``GQ_FULLY_CONNECTED``, ``TfLiteXNNPackDelegate``, ...).
        name: The node's name: ``[output tensor names]:index``.
        avg_us: Time per run in microseconds (device: the profiler's
            average; host: see the module docstring).
        first_us: Time of the first profiled run, in microseconds.
        percent: Share of the sum of the nodes' times.
        times_called: Invocations per run.
        subgraph: Index of the subgraph the node belongs to.
    """

    order: int
    index: int | None
    type: str
    name: str
    avg_us: float
    first_us: float | None = None
    percent: float | None = None
    times_called: int = 1
    subgraph: int = 0


@dataclass
class TypeTime:
    """All nodes of one type.

    Attributes:
        type: The node type.
        count: Number of nodes of that type.
        avg_us: Their summed time per run, in microseconds.
        percent: Share of the sum over all nodes.
        times_called: Their summed invocations per run.
    """

    type: str
    count: int
    avg_us: float
    percent: float | None = None
    times_called: int = 0


@dataclass
class OpProfile:
    """An op-level profile of one model.

    Attributes:
        source: How it was measured: ``"benchmark_model --enable_op_profiling"``
            or ``"host: isolated single-node models"``.
        runs: Number of profiled runs the averages are over (None if unknown).
        nodes: Every node, in run order (subgraph 0 first, then the others).
        by_type: Time per node type over subgraph 0, slowest first.
        nodes_total_us: Sum of the times of subgraph 0's nodes, per run.
        whole_graph_us: One whole inference, per run, measured in the same
            process (device: the profiled session's average, profiler on;
            host: median invoke of the full model minus the empty model's).
        baseline_us: Host only: the empty model's median invoke, the amount
            subtracted from every node and from the whole graph.
        delegate_internal: Device only: the ``Delegate internal`` table
            (ops inside delegate partitions, as a delegate that reports them
            names them); their time is part of their delegate node's.
        notes: Remarks on how to read the numbers.
    """

    source: str
    runs: int | None
    nodes: list[NodeTime]
    by_type: list[TypeTime]
    nodes_total_us: float
    whole_graph_us: float | None = None
    baseline_us: float | None = None
    delegate_internal: list[NodeTime] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The profile as plain JSON-ready data (``results.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OpProfile:
        """The inverse of :meth:`to_dict`; keys it does not know (``log``) are ignored."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["nodes"] = [NodeTime(**n) for n in data.get("nodes", [])]
        data["by_type"] = [TypeTime(**t) for t in data.get("by_type", [])]
        data["delegate_internal"] = [NodeTime(**n) for n in data.get("delegate_internal", [])]
        return cls(**data)


def summarize_types(nodes: list[NodeTime]) -> list[TypeTime]:
    """Sums the nodes of subgraph 0 by type.

    Args:
        nodes: The nodes of a profile.

    Returns:
        One entry per node type, slowest first: node count, summed time and
        calls per run, and percent of the sum over all types.

    Example:
        >>> [t.type for t in summarize_types(profile.nodes)]
        ['GQ_LSTM', 'GQ_FULLY_CONNECTED', 'RESHAPE']
    """
    groups: dict[str, TypeTime] = {}
    for n in nodes:
        if n.subgraph != 0:
            continue
        t = groups.setdefault(n.type, TypeTime(n.type, 0, 0.0))
        t.count += 1
        t.avg_us += n.avg_us
        t.times_called += n.times_called
    total = sum(t.avg_us for t in groups.values())
    for t in groups.values():
        t.percent = 100.0 * t.avg_us / total if total > 0 else None
    return sorted(groups.values(), key=lambda t: (-t.avg_us, t.type))


def _set_percents(nodes: list[NodeTime]):
    total = sum(n.avg_us for n in nodes if n.subgraph == 0)
    for n in nodes:
        if n.subgraph == 0:
            n.percent = 100.0 * n.avg_us / total if total > 0 else None


# ------------------------------------------------------------------ benchmark_model's tables


def _column_key(name: str) -> str:
    """``[avg ms]``, ``avg_ms``, ``[cdf %]`` ... -> ``avg ms``, ``avg ms``, ``cdf%``."""
    key = name.strip().strip("[]").strip().lower().replace("_", " ")
    return re.sub(r"\s*%", "%", key)


class _Table:
    """One table of the profiler's output: its title, columns and rows."""

    def __init__(self, title: str, columns: list[str], csv: bool):
        self.title, self.columns, self.csv = title, columns, csv
        self.rows: list[tuple[dict[str, str], str]] = []  # (cells by column, the line)

    def split(self, body: str) -> list[str] | None:
        """The fields of a row, or None when the line is not one of this table's rows."""
        n = len(self.columns)
        if self.csv:
            cells = body.split(",", n - 1)
        elif "\t" in body:
            cells = body.split("\t", n - 1)
        else:
            # Tabs turned into spaces (copied from a terminal): padded columns
            # are at least two spaces apart.
            cells = re.split(r"\s{2,}", body, maxsplit=n - 1)
        cells = [c.strip() for c in cells]
        return cells if len(cells) == n else None


def _header_columns(body: str) -> tuple[list[str], bool] | None:
    """The column keys of a table header line, and whether the table is CSV."""
    if "[node type]" in body.lower():
        return [_column_key(c) for c in re.findall(r"\[[^\]]*\]", body)], False
    if body.lower().startswith("node type,"):
        return [_column_key(c) for c in body.split(",")], True
    return None


def _number(table: _Table, row: dict, key: str, line: str, percent: bool = False) -> float | None:
    text = row.get(key)
    if text is None:
        return None
    if percent:
        text = text.rstrip("%").strip()
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"Expected a number in column [{key}] of the profiler's {table.title!r} table. "
                         f"Received {text!r} in line {line!r}.") from None


def _nodes_of(table: _Table, subgraph: int) -> list[NodeTime]:
    nodes = []
    for order, (row, line) in enumerate(table.rows):
        avg_ms = _number(table, row, "avg ms", line)
        if avg_ms is None:
            raise BenchError(f"Expected an [avg ms] column in the profiler's {table.title!r} table. "
                             f"Received columns {table.columns}.")
        first_ms = _number(table, row, "first", line)
        called = _number(table, row, "times called", line)
        name = row.get("name", "")
        match = _NODE_INDEX.search(name)
        nodes.append(NodeTime(
            order=order, index=int(match.group(1)) if match else None, type=row.get("node type", "?"),
            name=name, avg_us=avg_ms * 1000.0, first_us=None if first_ms is None else first_ms * 1000.0,
            percent=_number(table, row, "%", line, percent=True),
            times_called=1 if called is None else int(called), subgraph=subgraph))
    return nodes


def _types_of(table: _Table) -> list[TypeTime]:
    types = []
    for row, line in table.rows:
        count = _number(table, row, "count", line)
        called = _number(table, row, "times called", line)
        types.append(TypeTime(
            type=row.get("node type", "?"), count=0 if count is None else int(count),
            avg_us=(_number(table, row, "avg ms", line) or 0.0) * 1000.0,
            percent=_number(table, row, "avg%", line, percent=True),
            times_called=0 if called is None else int(called)))
    return types


def _stat_fields(text: str) -> dict[str, str]:
    stat = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            stat[key] = value.replace("(all same)", "")
    return stat


def parse_benchmark_profile(text: str) -> OpProfile:
    """Reads the op profile that ``benchmark_model --enable_op_profiling=true`` prints.

    Only the part after ``Operator-wise Profiling Info for Regular Benchmark
    Runs:`` is read (the initialization profile before it is not about
    inference). Its sections are the primary graph's tables, those of other
    subgraphs (after ``Subgraph (index: N) profile:``) and ``Delegate
    internal:``. In each, the ``Run Order`` table gives the nodes (or, if it
    is missing, ``Top by Computation Time``), ``Summary by node type`` the
    per-type times, and ``Timings (microseconds): count=R ... avg=T`` the
    number of profiled runs and the nodes' total per run. Both the tool's
    tab-separated tables (with or without the older ``[start]`` column) and
    its CSV form (``--profiling_output_csv_file``) are read; a line may
    carry a log tag (``INFO: ``).

    Args:
        text: The tool's output (or the CSV file it wrote).

    Returns:
        The profile. ``whole_graph_us`` is left None: the caller knows which
        inference loop the profile belongs to (see ``run.py``).

    Raises:
        BenchError: The text holds no run profile (was
            ``--enable_op_profiling=true`` given? did the run finish?), or a
            table cell that must be a number is not.

    Example:
        >>> p = parse_benchmark_profile(log_text)
        >>> p.nodes[0].type, p.nodes[0].avg_us
        ('FULLY_CONNECTED', 12.0)
    """
    if not isinstance(text, str):
        raise BenchError(f"Expected the benchmark_model output as str. Received: {type(text).__name__}.")
    lines = [_PREFIX.sub("", raw.lstrip(), count=1) for raw in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.strip() == RUN_PROFILE_HEADER), None)
    csv = start is None and any(line.lower().startswith("node type,") for line in lines)
    if start is None and not csv:
        init_only = any(line.strip() == _INIT_PROFILE_HEADER for line in lines)
        raise BenchError(
            f"Expected benchmark_model's op profile (a line {RUN_PROFILE_HEADER!r} and its tables). Received "
            + ("only the initialization profile: the run ended before its profiled runs were reported"
               if init_only else "none: was --enable_op_profiling=true passed, and did the run finish?")
            + f" ({len(lines)} lines of output)")
    section: tuple[str, int] = ("graph", 0)
    tables: dict[tuple[str, int], dict[str, _Table]] = {}
    timings: dict[tuple[str, int], dict[str, str]] = {}
    executed: dict[tuple[str, int], int] = {}
    title, table = None, None
    for line in lines[start + 1:] if start is not None else lines:
        body = line.strip()
        if body == _INIT_PROFILE_HEADER:
            break
        if table is not None:
            cells = table.split(body) if body else None
            if cells is not None:
                table.rows.append((dict(zip(table.columns, cells)), body))
                continue
            table = None
        match = _SUBGRAPH.fullmatch(body)
        if body == "Primary graph profile:":
            section = ("graph", 0)
        elif match:
            section = ("graph", int(match.group(1)))
        elif body.startswith("Delegate internal:"):
            section = ("delegate", 0)
        elif _TITLE.fullmatch(body):
            title = _TITLE.fullmatch(body).group(1)
        elif (header := _header_columns(body)) is not None:
            columns, is_csv = header
            table = _Table(title or "table", columns, is_csv)
            tables.setdefault(section, {})[table.title] = table
            title = None
        elif (m := _NODES_EXECUTED.match(body)) is not None:
            executed[section] = int(m.group(1))
        elif (m := _TIMINGS.fullmatch(body)) is not None:
            key = ("graph", int(m.group(1))) if m.group(1) else section
            timings[key] = _stat_fields(m.group(2))

    def nodes_in(key):
        found = tables.get(key, {})
        chosen = found.get("Run Order") or found.get("Top by Computation Time")
        return _nodes_of(chosen, key[1] if key[0] == "graph" else 0) if chosen else []

    nodes = nodes_in(("graph", 0))
    if not nodes:
        raise BenchError(
            f"Expected a 'Run Order' table of the primary graph after {RUN_PROFILE_HEADER!r}. Received "
            f"tables {sorted(t for s in tables.values() for t in s) or 'none'}.")
    for key in sorted(k for k in tables if k[0] == "graph" and k[1] != 0):
        nodes += nodes_in(key)
    notes = []
    if ("graph", 0) in executed and executed[("graph", 0)] != sum(n.subgraph == 0 for n in nodes):
        notes.append(f"the profiler counted {executed[('graph', 0)]} nodes; its run-order table lists "
                     f"{sum(n.subgraph == 0 for n in nodes)}")
    summary = tables.get(("graph", 0), {}).get("Summary by node type")
    by_type = sorted(_types_of(summary), key=lambda t: (-t.avg_us, t.type)) if summary else summarize_types(nodes)
    stat = timings.get(("graph", 0), {})
    runs = int(stat["count"]) if stat.get("count", "").isdigit() else None
    total = None
    for key in ("avg", "curr"):
        try:
            total = float(stat[key])
            break
        except (KeyError, ValueError):
            continue
    if total is None:
        total = sum(n.avg_us for n in nodes if n.subgraph == 0)
    return OpProfile(source="benchmark_model --enable_op_profiling", runs=runs, nodes=nodes, by_type=by_type,
                     nodes_total_us=total, delegate_internal=nodes_in(("delegate", 0)), notes=notes)


# ------------------------------------------------------------------ host


def _random_input(rng, shape, dtype):
    """Seeded inputs as hostbench fills them: floats in [-1, 1), integers in [0, 10)."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise BenchError(f"Expected float, integer or bool model inputs (they are filled with random values). "
                     f"Received an input of type {dtype}.")


def _is_constant(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer] if 0 <= tensor.buffer < len(model.buffers) else None
    return buf is not None and buf.data is not None and len(buf.data) > 0


def _node_name(sub, op, index) -> str:
    names = [sub.tensors[t].name.decode("utf-8", "replace") if t >= 0 else "-" for t in op.outputs]
    return f"[{', '.join(names)}]:{index}"


def _live_inputs(model, sub, op) -> list[int]:
    """The op's inputs that hold activations: not constant, not variable, not omitted."""
    seen = []
    for t in op.inputs:
        if t >= 0 and t not in seen and not _is_constant(model, sub.tensors[t]) and not sub.tensors[t].isVariable:
            seen.append(int(t))
    return seen


def _single_op_model(data: bytes, model, op_index: int) -> bytes:
    """A model of subgraph 0's operator ``op_index`` alone.

    Its non-constant inputs become the model's inputs and its outputs the
    model's outputs; signature defs and metadata are dropped (they name the
    full model's tensors). With one subgraph, only the op's tensors and
    their buffers are kept, so the model is small; ops that call other
    subgraphs (control flow) keep the full model around them.
    """
    import numpy as np

    from converters import flatbuf

    sub, op = model.subgraphs[0], model.subgraphs[0].operators[op_index]
    inputs = _live_inputs(model, sub, op)
    if len(model.subgraphs) > 1:
        single = flatbuf.read(data)
        s = single.subgraphs[0]
        s.operators = [s.operators[op_index]]
        s.inputs = np.array(inputs, np.int32)
        s.outputs = np.array([t for t in op.outputs if t >= 0], np.int32)
        single.signatureDefs, single.metadata = None, None
        return flatbuf.write(single)
    from ai_edge_litert import schema_py_generated as schema

    intermediates = [] if op.intermediates is None else list(op.intermediates)
    used = [int(t) for t in list(op.inputs) + list(op.outputs) + intermediates if t >= 0]
    remap = {t: i for i, t in enumerate(dict.fromkeys(used))}
    single = schema.ModelT()
    single.version, single.description = model.version, b"android_bench op profile: one node"
    single.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    single.buffers = [schema.BufferT()]
    buffer_of = {}  # buffer index in the full model -> in this one (shared buffers stay shared)
    tensors = []
    for t in remap:
        tensor = copy.copy(sub.tensors[t])
        if _is_constant(model, tensor):
            if tensor.buffer not in buffer_of:
                single.buffers.append(model.buffers[tensor.buffer])
                buffer_of[tensor.buffer] = len(single.buffers) - 1
            tensor.buffer = buffer_of[tensor.buffer]
        else:
            tensor.buffer = 0
        tensors.append(tensor)

    def mapped(indices):
        return None if indices is None else np.array([remap[int(t)] if t >= 0 else -1 for t in indices], np.int32)

    new_op = copy.copy(op)
    new_op.opcodeIndex = 0
    new_op.inputs, new_op.outputs, new_op.intermediates = (mapped(op.inputs), mapped(op.outputs),
                                                           mapped(op.intermediates))
    s = schema.SubGraphT()
    s.tensors, s.operators, s.name = tensors, [new_op], sub.name
    s.inputs = mapped(inputs)
    s.outputs = mapped([t for t in op.outputs if t >= 0])
    single.subgraphs = [s]
    return flatbuf.write(single)


def _capture_model(data: bytes, wanted: list[int]) -> bytes:
    """The full model with the ``wanted`` tensors of subgraph 0 added to its outputs.

    Marking a tensor as an output makes every runtime (XNNPACK partitions
    included) keep its value, so one run yields each node's real inputs.
    """
    import numpy as np

    from converters import flatbuf

    model = flatbuf.read(data)
    sub = model.subgraphs[0]
    outputs = [int(t) for t in sub.outputs]
    sub.outputs = np.array(outputs + [t for t in wanted if t not in outputs], np.int32)
    model.signatureDefs = None
    return flatbuf.write(model)


def _empty_model() -> bytes:
    """A model without operators: one float tensor that is input and output."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    from converters import flatbuf

    model = schema.ModelT()
    model.version, model.description = 3, b"android_bench op profile: empty"
    model.operatorCodes, model.buffers = [], [schema.BufferT()]
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = np.array([1], np.int32), schema.TensorType.FLOAT32, 0, b"x"
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = [tensor], []
    sub.inputs, sub.outputs = np.array([0], np.int32), np.array([0], np.int32)
    model.subgraphs = [sub]
    return flatbuf.write(model)


def _open(model_bytes: bytes, what: str, num_threads: int, kernel: str):
    from converters.runtime import make_interpreter

    try:
        return make_interpreter(model_bytes, num_threads=num_threads, kernel=kernel)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise BenchError(f"Could not open {what} for the op profile: {e}") from None


def _feed(interpreter, values: list, what: str):
    """Sets the inputs (resizing those whose shape differs) and allocates."""
    details = interpreter.get_input_details()
    if len(details) != len(values):
        raise BenchError(f"Expected {len(values)} inputs in {what}. Received {len(details)}.")
    resized = False
    for d, v in zip(details, values):
        if tuple(d["shape"]) != v.shape:
            interpreter.resize_tensor_input(d["index"], v.shape)
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for d, v in zip(interpreter.get_input_details(), values):
        interpreter.set_tensor(d["index"], v)


def profile_host(model_path, runs: int = 200, num_threads: int = 1, delegate_options: dict | None = None,
                 warmup: int = 5) -> OpProfile:
    """Profiles a model on this machine, node by node, with LiteRT and the GQ delegate.

    Each operator of subgraph 0 runs alone in a one-operator model, on the
    values its inputs hold in a real run of the full model (inputs of the
    full model: seeded random, as ``hostbench`` fills them). Every timed run
    invokes each node's model, the full model and the empty model once, in
    a fresh random order, so drift and the cache state left by the model
    before hit them all alike; garbage collection is off while timing. See
    the module docstring for what the numbers mean.

    Args:
        model_path: The .tflite file.
        runs: Timed invokes of each model (after ``warmup`` untimed ones).
        num_threads: Interpreter threads for every model.
        delegate_options: Options of the GQ delegate; ``{"kernel": NAME}``
            chooses its kernel (default ``auto``). Other keys are refused.
        warmup: Untimed invokes of each model before the timed runs.

    Returns:
        The profile: ``avg_us`` is the median, ``first_us`` the first timed
        run, both minus the empty model's median (floored at 0);
        ``whole_graph_us`` the full model's median minus the same amount;
        ``baseline_us`` that amount.

    Raises:
        BenchError: Bad arguments, a file that is not a model, or a model
            (or one of its nodes alone) the runtime cannot open or run.

    Example:
        >>> p = profile_host("gq4/encoder.tflite", runs=100)
        >>> p.nodes_total_us, p.whole_graph_us
        (41.2, 44.0)
    """
    import numpy as np

    from converters import flatbuf

    for name, value, low in (("runs", runs, 1), ("num_threads", num_threads, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BenchError(f"Expected {name} to be an integer >= {low}. Received {name}={value!r}.")
    options = dict(delegate_options or {})
    kernel = str(options.pop("kernel", "auto"))
    if options:
        raise BenchError(f"Expected delegate options among ['kernel']. Received {sorted(options)}.")
    path = Path(model_path)
    if not path.is_file():
        raise BenchError(f"Model file not found: {str(path)!r}.")
    data = path.read_bytes()
    try:
        model = flatbuf.read(data)
    except Exception as e:  # the flatbuffer reader raises anything on damaged data
        raise BenchError(f"Expected a TFLite model in {str(path)!r}. Received a file the flatbuffer reader "
                         f"refuses: {type(e).__name__}: {e}") from None
    if not model.subgraphs:
        raise BenchError(f"Expected a model with at least one subgraph. Received none in {str(path)!r}.")
    sub = model.subgraphs[0]
    ops = list(sub.operators or [])

    # One run of the full model, every node input kept, gives the values.
    rng = np.random.default_rng(_SEED)
    whole = _open(data, f"model {str(path)!r}", num_threads, kernel)
    model_inputs = [_random_input(rng, tuple(d["shape"]), d["dtype"]) for d in whole.get_input_details()]
    _feed(whole, model_inputs, str(path))
    live = [_live_inputs(model, sub, op) for op in ops]
    wanted = list(dict.fromkeys(t for ts in live for t in ts))
    capture = _open(_capture_model(data, wanted), f"model {str(path)!r} (all node inputs as outputs)",
                    num_threads, kernel)
    _feed(capture, model_inputs, str(path))
    try:
        capture.invoke()
    except (ValueError, RuntimeError) as e:
        raise BenchError(f"Could not run model {str(path)!r}: {e}") from None
    values = {t: capture.get_tensor(t).copy() for t in wanted}
    del capture

    invokers = [_open(_empty_model(), "the empty model", num_threads, kernel)]
    for i, op in enumerate(ops):
        what = f"node {i} ({flatbuf.op_name(model, op)} {_node_name(sub, op, i)}) alone"
        interpreter = _open(_single_op_model(data, model, i), what, num_threads, kernel)
        _feed(interpreter, [values[t] for t in live[i]], what)
        invokers.append(interpreter)
    invokers.append(whole)
    calls = [it.invoke for it in invokers]
    samples = np.zeros((len(calls), runs), np.float64)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            for call in calls:
                call()
        clock = time.perf_counter_ns
        order = np.arange(len(calls))
        for r in range(runs):
            # A fresh order each run: what runs just before a model (the
            # whole graph evicts caches) is measured to shift its invoke by
            # up to 50%, so no model may always follow the same one.
            rng.shuffle(order)
            for k in order:
                call = calls[k]
                t0 = clock()
                call()
                samples[k, r] = clock() - t0
    except (ValueError, RuntimeError) as e:
        raise BenchError(f"An invoke failed while profiling {str(path)!r}: {e}") from None
    finally:
        if enabled:
            gc.enable()
    samples /= 1000.0  # ns -> us
    medians = np.median(samples, axis=1)
    baseline = float(medians[0])
    nodes = [NodeTime(order=i, index=i, type=flatbuf.op_name(model, op), name=_node_name(sub, op, i),
                      avg_us=max(0.0, float(medians[i + 1]) - baseline),
                      first_us=max(0.0, float(samples[i + 1, 0]) - baseline))
             for i, op in enumerate(ops)]
    _set_percents(nodes)
    total = sum(n.avg_us for n in nodes)
    return OpProfile(
        source="host: isolated single-node models", runs=runs, nodes=nodes, by_type=summarize_types(nodes),
        nodes_total_us=total, whole_graph_us=max(0.0, float(medians[-1]) - baseline), baseline_us=baseline,
        notes=[f"each node timed alone in a one-node model on the values of a real run (median of {runs} "
               f"invokes in a shuffled order), minus {baseline:.2f} µs, the median invoke of a model without "
               "nodes; "
               f"LiteRT {_litert_version()}, {num_threads} thread(s), GQ kernel {kernel}"])


def _litert_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------ report


def _us(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_profile(profile: OpProfile | dict, max_nodes: int | None = None) -> str:
    """Markdown tables of a profile: per op type, then per node, slowest first.

    Args:
        profile: An :class:`OpProfile` or its ``to_dict()`` form.
        max_nodes: Show only the slowest this many nodes (None: all).

    Returns:
        The text: a line with the totals, the by-type table and the node table.

    Example:
        >>> print(format_profile(profile_host("m.tflite")))
    """
    if isinstance(profile, dict):
        profile = OpProfile.from_dict(profile)
    total = profile.nodes_total_us
    head = f"Op profile ({profile.source}"
    head += f", {profile.runs} runs): " if profile.runs else "): "
    head += f"sum of nodes {_us(total)} µs per run"
    if profile.whole_graph_us is not None:
        gap = profile.whole_graph_us - total
        share = f", {100.0 * gap / profile.whole_graph_us:+.1f}%" if profile.whole_graph_us > 0 else ""
        head += f"; whole graph {_us(profile.whole_graph_us)} µs (outside the nodes: {gap:+.1f} µs{share})"
    if profile.baseline_us is not None:
        head += f"; empty-model invoke subtracted: {profile.baseline_us:.2f} µs"
    lines = [head + "."]
    lines += [f"Note: {n}." for n in profile.notes]
    lines += ["", "| op type | nodes | µs per run | % | calls per run |", "|---|---:|---:|---:|---:|"]
    for t in profile.by_type:
        lines.append(f"| {_cell(t.type)} | {t.count} | {_us(t.avg_us)} | {_pct(t.percent)} | {t.times_called} |")
    shown = sorted(profile.nodes, key=lambda n: (n.subgraph, -n.avg_us, n.order))
    if max_nodes is not None and len(shown) > max_nodes:
        lines += ["", f"The {max_nodes} slowest of {len(shown)} nodes:"]
        shown = shown[:max_nodes]
    multi = any(n.subgraph for n in shown)
    lines += ["", "| node | type | avg µs | first µs | % | name |" if not multi
              else "| subgraph | node | type | avg µs | first µs | % | name |",
              "|---:|---|---:|---:|---:|---|" if not multi else "|---:|---:|---|---:|---:|---:|---|"]
    for n in shown:
        index = "-" if n.index is None else str(n.index)
        row = (f"| {index} | {_cell(n.type)} | {_us(n.avg_us)} | {_us(n.first_us)} | {_pct(n.percent)} "
               f"| {_cell(n.name)} |")
        lines.append(f"| {n.subgraph} " + row if multi else row)
    if profile.delegate_internal:
        lines += ["", "Inside delegate partitions (part of their delegate node's time):", "",
                  "| type | avg µs | first µs | name |", "|---|---:|---:|---|"]
        for n in sorted(profile.delegate_internal, key=lambda n: -n.avg_us):
            lines.append(f"| {_cell(n.type)} | {_us(n.avg_us)} | {_us(n.first_us)} | {_cell(n.name)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line


def main(args) -> int:
    """``python -m android_bench profile MODEL...``: host op profiles, printed (and ``--json``)."""
    import json
    import sys

    for flag, value in (("--runs", args.runs), ("--threads", args.threads), ("--max-nodes", args.max_nodes)):
        if value is not None and value < 1:
            raise BenchError(f"Expected {flag} >= 1. Received {value}.")
    options = {"kernel": args.kernel} if args.kernel else None
    out = {"format": "android_bench.op_profile/1", "runs": args.runs, "threads": args.threads, "models": []}
    for model in args.models:
        profile = profile_host(model, runs=args.runs, num_threads=args.threads, delegate_options=options)
        out["models"].append({"name": Path(model).stem, "path": str(Path(model).resolve()),
                              "op_profile": profile.to_dict()})
        if not args.quiet:
            print(f"## {Path(model).stem} ({model})\n\n{format_profile(profile, args.max_nodes)}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        if not args.quiet:
            print(f"wrote {args.json}", file=sys.stderr)
    return 0


def add_parser(sub):
    p = sub.add_parser(
        "profile",
        help="op-level profile of .tflite models on this machine (per node and per op type)",
        description="Op-level profile on this machine: each node of subgraph 0 timed alone in a one-node "
                    "model on the values of a real run (LiteRT + the GQ delegate), minus the invoke cost of "
                    "an empty model; also the whole graph. On a phone use `run --op-profile`.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".tflite files")
    p.add_argument("--runs", type=int, default=200, help="timed invokes of every node (default 200)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--kernel", help="GQ delegate kernel (default auto; see converters.runtime.kernels())")
    p.add_argument("--max-nodes", type=int, help="print only the slowest N nodes per model")
    p.add_argument("--json", metavar="PATH", help="also write the profiles as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing (with --json)")
    p.set_defaults(func=main)
    return p

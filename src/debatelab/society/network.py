"""The society's graph (networkx generators, seeded) and each step's encounters along its edges.

networkx is imported here only, when a society runs: ``import debatelab`` stays light.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any, Sequence

from ..debate import derive_seed
from ..errors import DebatelabError
from .config import MAX_EDGES, NetworkConfig

_INDEX = re.compile(r"[0-9]{1,9}")


def _nx() -> Any:
    try:
        import networkx
    except ImportError:
        raise DebatelabError("a society needs networkx: pip install 'debatelab[analysis]'") from None
    return networkx


def build_graph(network: NetworkConfig, parties: Sequence[str], communities: Sequence[int | None],
                seed: int) -> Any:
    """The undirected graph on agents 0..n-1 (``parties`` and ``communities`` per agent)."""
    nx, n = _nx(), len(parties)
    rng_seed = derive_seed(seed, "network") % 2**32
    kind, degree = network.kind, network.degree
    if kind == "complete":
        graph = nx.complete_graph(n)
    elif kind == "erdos_renyi":
        graph = nx.fast_gnp_random_graph(n, min(1.0, degree / max(n - 1, 1)), seed=rng_seed)
    elif kind == "watts_strogatz":
        check_network(network, n)
        graph = nx.watts_strogatz_graph(n, max(2, int(degree) // 2 * 2), network.rewiring, seed=rng_seed)
    elif kind == "barabasi_albert":
        check_network(network, n)
        graph = nx.barabasi_albert_graph(n, max(1, round(degree / 2)), seed=rng_seed)
    elif kind == "two_communities":
        graph = _two_communities(nx, [c or 0 for c in communities], degree, network.homophily, rng_seed)
    else:
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(read_edge_list(network.file, n))  # type: ignore[arg-type]
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    return graph


def check_network(network: NetworkConfig, n: int) -> None:
    """Fail before the run directory is touched when the network cannot be built for ``n`` agents."""
    if network.kind == "watts_strogatz" and max(2, int(network.degree) // 2 * 2) >= n:
        raise DebatelabError(f"network.degree {network.degree:g} needs more than {n} agents for watts_strogatz")
    if network.kind == "barabasi_albert" and max(1, round(network.degree / 2)) >= n:
        raise DebatelabError(f"network.degree {network.degree:g} needs more agents than {n} for barabasi_albert")
    if network.kind == "edge_list":
        read_edge_list(network.file, n)  # type: ignore[arg-type]


def _two_communities(nx: Any, communities: list[int], degree: float, homophily: float, seed: int) -> Any:
    """A stochastic block model with ``degree`` expected ties per agent, ``homophily`` of all ties
    inside a block: one probability for every within-block pair, one for every cross pair (so
    with unequal blocks the smaller block's agents have fewer ties, all in the same proportion)."""
    sizes = [communities.count(0), communities.count(1)]
    order = sorted(range(len(communities)), key=lambda i: (communities[i], i))
    ties = degree * len(communities) / 2
    within_pairs, cross_pairs = sum(s * (s - 1) / 2 for s in sizes), sizes[0] * sizes[1]
    p_in = min(1.0, homophily * ties / within_pairs) if within_pairs else 0.0
    p_out = min(1.0, (1 - homophily) * ties / cross_pairs) if cross_pairs else 0.0
    p = [[p_in, p_out], [p_out, p_in]]
    block = nx.stochastic_block_model([s for s in sizes if s], _nonempty(p, sizes), seed=seed, sparse=True)
    return nx.relabel_nodes(block, dict(enumerate(order)))  # block order -> agent index


def _nonempty(p: list[list[float]], sizes: list[int]) -> list[list[float]]:
    keep = [i for i, s in enumerate(sizes) if s]
    return [[p[i][j] for j in keep] for i in keep]


def read_edge_list(path: Path, n: int) -> list[tuple[int, int]]:
    """``i j`` per line (``#`` comments, blank lines skipped); one line per bad input, naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DebatelabError(f"cannot read edge list {path}: {exc.strerror or exc}") from None
    edges = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not all(_INDEX.fullmatch(f) for f in fields):
            raise DebatelabError(f"edge list {path} line {number}: expected two agent indices, got {line.strip()!r}")
        i, j = int(fields[0]), int(fields[1])
        if i >= n or j >= n:
            raise DebatelabError(f"edge list {path} line {number}: agent {max(i, j)} does not exist "
                                 f"(the population is {n}: 0..{n - 1})")
        edges.append((i, j))
        if len(edges) > MAX_EDGES:
            raise DebatelabError(f"edge list {path} has more than {MAX_EDGES:,} edges")
    return edges


def encounters(neighbours: Sequence[Sequence[int]], size: int, seed: int, step: int) -> list[tuple[int, ...]]:
    """One step's encounters: agents in a seeded random order each meet ``size - 1`` free
    neighbours drawn at random (an agent whose neighbours are all taken sits the step out).
    A pure function of the graph, the seed and the step, so a resumed run meets the same way."""
    rng = random.Random(derive_seed(seed, "match", step))
    order = list(range(len(neighbours)))
    rng.shuffle(order)
    free = [True] * len(neighbours)
    out = []
    for agent in order:
        if not free[agent]:
            continue
        available = [j for j in neighbours[agent] if free[j]]
        if len(available) < size - 1:
            continue
        group = (agent, *rng.sample(available, size - 1))
        for member in group:
            free[member] = False
        out.append(group)
    return out


def neighbour_lists(graph: Any, n: int) -> list[list[int]]:
    """Sorted neighbours of every agent (the order encounters draw from)."""
    return [sorted(graph.neighbors(i)) for i in range(n)]


def graph_sha(graph: Any) -> str:
    """A hash of the graph's edges: part of a society run's fingerprint, so a run never resumes
    on another graph (an edited edge list, another networkx's generators)."""
    edges = sorted((min(a, b), max(a, b)) for a, b in graph.edges())
    return hashlib.sha256(repr((graph.number_of_nodes(), edges)).encode()).hexdigest()[:16]


def check_meetings(neighbours: Sequence[Sequence[int]], size: int) -> None:
    """A society where no agent has ``size - 1`` neighbours would never meet: refuse it."""
    if not any(len(n) >= size - 1 for n in neighbours):
        raise DebatelabError(f"no agent of the network has {size - 1} neighbour(s), so no encounter of {size} "
                             "can ever happen; use a denser network or smaller encounters")

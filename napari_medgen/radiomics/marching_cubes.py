"""Marching cubes for binary masks, reduced to per-cube lookup tables (mesh volume and surface area).

Lorensen & Cline (1987) march a 2x2x2 cube over the volume; its 8 corners, inside (1) or outside (0) the ROI,
form an 8-bit configuration. The surface inside the cube is a set of polygons whose vertices lie where the
surface crosses a cube edge; for a 0/1 mask at iso-level 0.5 that is always the edge midpoint. The paper lists
15 base configurations; every other one is a rotation of a base case, or the complement of one (triangles
flipped). This module derives the 256-entry triangle table from those base cases with the 24 cube rotations.

Because every vertex sits at a fixed midpoint, a configuration always contributes the same triangles, up to a
translation by the cube position ``p``. Hence per configuration:

* area: the summed triangle area for a given voxel spacing (spacing-dependent, computed once per spacing);
* volume: the signed-tetrahedron term ``det(a+p, b+p, c+p) / 6 = det(a, b, c) / 6 + p . (axb + bxc + cxa) / 6``
  (the determinant is trilinear), i.e. a constant plus a term linear in ``p``.

The mesh volume and area of a mask are then a histogram of configurations dotted with these tables plus one
position-weighted sum, vectorised over all cubes and over a batch of masks. In index units the constants are
exact integers after scaling (vertices are on a half-integer grid), so volume sums are exact.

Faces where two diagonal corners are inside and two outside are ambiguous (the paper's hole problem): the
surface may separate the two inside corners or join them. The base cases separate the base case's own corners;
pyradiomics, whose values we reproduce, resolves some configurations the other way (its table is not symmetric
under rotation). Those configurations are listed in ``_JOINED`` (found by probing pyradiomics' mesh of every
single-cube configuration; `tests/radiomics/test_shape.py` checks all 256 against it).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

# Corner ``c`` of a cube sits at offset ``(c >> a) & 1`` along array axis ``a``; a configuration sets bit ``c``
# when corner ``c`` is inside the ROI.
CORNER_OFFSETS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=np.int64)
# The 12 cube edges as corner pairs (low corner, high corner).
EDGES = tuple((c, c | 1 << a) for c in range(8) for a in range(3) if not (c >> a) & 1)
_EDGE_INDEX = {e: i for i, e in enumerate(EDGES)}
# Vertex positions in doubled index units (integers): edge midpoints.
_MIDPOINTS2 = CORNER_OFFSETS[[a for a, _ in EDGES]] + CORNER_OFFSETS[[b for _, b in EDGES]]

# Lorensen & Cline's base cases (their Fig. 3) as (inside corners, fan apex). The surface of a base case separates
# its inside corners from the rest on every face; each polygon is triangulated as a fan, from the vertex on the
# ``apex`` edge when the polygon has it (only non-planar polygons need one: pentagons and the cases 11/14
# hexagons; pyradiomics fans them from these vertices). Cases 11 and 14 are mirror images, which no rotation
# maps onto each other.
_BASE_CASES: dict[int, tuple[tuple[int, ...], tuple[int, int] | None]] = {
    1: ((0,), None),
    2: ((0, 1), None),
    3: ((0, 3), None),
    4: ((0, 7), None),
    5: ((0, 1, 2), (1, 5)),
    6: ((0, 1, 6), None),
    7: ((1, 2, 4), None),
    8: ((0, 1, 2, 3), None),
    9: ((0, 1, 2, 4), None),
    10: ((0, 1, 6, 7), None),
    11: ((0, 1, 3, 7), (5, 7)),
    12: ((0, 1, 2, 7), (1, 5)),
    13: ((1, 2, 4, 7), None),
    14: ((0, 2, 3, 7), (6, 7)),
}
# The other option of the ambiguous base cases with fewer than 4 corners: inside corners joined across their
# ambiguous faces (for 4-corner cases the other option is the complement's base case).
_JOINED_CASES: dict[int, tuple[tuple[int, ...], tuple[int, int] | None]] = {
    3: ((0, 3), (0, 4)),
    6: ((0, 1, 6), (6, 7)),
    7: ((1, 2, 4), (2, 6)),
}
# Configurations that pyradiomics resolves with the other option than Lorensen & Cline's (separating the
# minority side), grouped by base case.
_JOINED = frozenset({
    9, 40, 72, 183, 215, 246,  # case 3
    25, 26, 28, 44, 56, 74, 88, 103, 118, 137, 152, 167, 181, 199, 211, 227, 229, 230,  # case 6
    41, 73, 104, 151, 182, 214,  # case 7
    60, 90, 153,  # case 10
    30, 45, 57, 75, 89, 106, 108, 120, 154, 156, 169, 201,  # case 12
    105,  # case 13
})


def _rotations() -> list[tuple[int, ...]]:
    """The 24 proper rotations of the cube as corner permutations."""
    perms = []
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            rot = np.zeros((3, 3), dtype=np.int64)
            rot[range(3), axes] = signs
            if round(np.linalg.det(rot)) != 1:
                continue
            moved = (rot @ (2 * CORNER_OFFSETS.T - 1) + 1) // 2
            perms.append(tuple(int(moved[0, c] | moved[1, c] << 1 | moved[2, c] << 2) for c in range(8)))
    return perms


def _faces() -> list[list[int]]:
    """Corners of the 6 cube faces, each in cyclic order."""
    out = []
    for axis in range(3):
        u, v = (a for a in range(3) if a != axis)
        for side in (0, 1):
            out.append([side << axis | du << u | dv << v for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1))])
    return out


def _polygons(config: int, separate_inside: bool) -> list[list[int]]:
    """Closed loops of crossed edges: on each face the surface cuts off corners; ambiguous faces cut off the
    inside corners when ``separate_inside`` and the outside ones otherwise."""
    neighbours: dict[int, list[int]] = {}
    for face in _faces():
        inside = [(config >> c) & 1 for c in face]
        crossed = [_EDGE_INDEX[tuple(sorted((face[i], face[(i + 1) % 4])))] for i in range(4)]
        cuts = [i for i in range(4) if inside[i] != inside[(i + 1) % 4]]
        if len(cuts) == 2:
            segments = [(crossed[cuts[0]], crossed[cuts[1]])]
        elif len(cuts) == 4:  # ambiguous face: cut off the two corners of the separated side
            side = 1 if separate_inside else 0
            segments = [(crossed[i - 1], crossed[i]) for i in range(4) if inside[i] == side]
        else:
            segments = []
        for a, b in segments:
            neighbours.setdefault(a, []).append(b)
            neighbours.setdefault(b, []).append(a)
    loops, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, prev = [start], None
        seen.add(start)
        while True:
            nxt = [e for e in neighbours[loop[-1]] if e != prev and e not in seen]
            if not nxt:
                break
            prev = loop[-1]
            loop.append(nxt[0])
            seen.add(nxt[0])
        loops.append(loop)
    return loops


def _oriented(tri: tuple[int, int, int], config: int) -> tuple[int, int, int]:
    """The triangle with its normal pointing out of the ROI (from inside to outside corners)."""
    pts = _MIDPOINTS2[list(tri)]
    normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    outward = 0
    for e in tri:
        lo, hi = EDGES[e]
        step = CORNER_OFFSETS[hi] - CORNER_OFFSETS[lo]
        outward += int(normal @ step) * (1 if (config >> lo) & 1 else -1)
    if outward == 0:
        raise AssertionError(f"cannot orient triangle {tri} of configuration {config}")
    return tri if outward > 0 else (tri[0], tri[2], tri[1])


def _triangles(corners: tuple[int, ...], apex: tuple[int, int] | None, separate: bool) -> list[tuple[int, ...]]:
    config = sum(1 << c for c in corners)
    tris = []
    for loop in _polygons(config, separate):
        if apex is not None and _EDGE_INDEX[apex] in loop:
            k = loop.index(_EDGE_INDEX[apex])
            loop = loop[k:] + loop[:k]
        tris += [_oriented((loop[0], loop[i], loop[i + 1]), config) for i in range(1, len(loop) - 1)]
    return tris


@lru_cache(maxsize=1)
def triangle_table() -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Triangles (as edge-index triples, outward normals) of each of the 256 configurations."""
    # Surfaces keyed by (configuration, separated side): the base cases separate their inside corners, the
    # joined variants their outside corners; complements swap inside and outside and flip the triangles.
    found: dict[tuple[int, bool], list[tuple[int, ...]]] = {(0, True): [], (255, False): []}
    variants = [(spec, True) for spec in _BASE_CASES.values()] + [(spec, False) for spec in _JOINED_CASES.values()]
    for (corners, apex), separate in variants:
        tris = _triangles(corners, apex, separate)
        for perm in _rotations():
            config = sum(1 << perm[c] for c in corners)
            edge_map = [_EDGE_INDEX[tuple(sorted((perm[a], perm[b])))] for a, b in EDGES]
            moved = [tuple(edge_map[e] for e in t) for t in tris]
            found.setdefault((config, separate), moved)
            found.setdefault((255 ^ config, not separate), [t[::-1] for t in moved])
    table = []
    for config in range(256):
        minority_inside = bin(config).count("1") <= 4
        table.append(tuple(found[(config, minority_inside != (config in _JOINED))]))
    return tuple(table)


@lru_cache(maxsize=1)
def volume_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per configuration, in index units: 48 x the constant volume term and 24 x the linear one, as integers."""
    const = np.zeros(256, dtype=np.int64)
    linear = np.zeros((256, 3), dtype=np.int64)
    for config, tris in enumerate(triangle_table()):
        for tri in tris:
            a, b, c = (_MIDPOINTS2[e] for e in tri)  # doubled units: det scales by 8, cross products by 4
            const[config] += int(np.dot(a, np.cross(b, c)))  # 8 det -> /8/6 = /48
            linear[config] += np.cross(a, b) + np.cross(b, c) + np.cross(c, a)  # 4 x -> /4/6 = /24
    const.setflags(write=False)
    linear.setflags(write=False)
    return const, linear


def area_table(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Surface area contributed by each configuration for this voxel spacing (array-axis order)."""
    return _area_table(tuple(float(s) for s in spacing_zyx))


@lru_cache(maxsize=16)
def _area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    scale = 0.5 * np.asarray(spacing)
    out = np.zeros(256)
    for config, tris in enumerate(triangle_table()):
        if tris:
            pts = _MIDPOINTS2[np.asarray(tris)] * scale  # (T, 3 vertices, 3)
            cross = np.cross(pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0])
            out[config] = 0.5 * np.sqrt((cross * cross).sum(1)).sum()
    out.setflags(write=False)
    return out


def configurations(masks: np.ndarray) -> np.ndarray:
    """Cube configurations (uint8) of a batch of boolean (N, z, y, x) masks zero-padded by one voxel.

    Output shape is (N, z + 1, y + 1, x + 1); cube ``(i, j, k)`` has its corner 0 on padded voxel ``(i, j, k)``.
    Built axis by axis: pairs along z give bits 0/1, pairs of those along y bits 0-3, then along x bits 0-7.
    """
    n, d0, d1, d2 = masks.shape
    padded = np.zeros((n, d0 + 2, d1 + 2, d2 + 2), dtype=np.uint8)
    padded[:, 1:-1, 1:-1, 1:-1] = masks
    bits = padded[:, :-1] | (padded[:, 1:] << 1)
    bits = bits[:, :, :-1] | (bits[:, :, 1:] << 2)
    return bits[:, :, :, :-1] | (bits[:, :, :, 1:] << 4)


def mesh_volume_area(masks: np.ndarray, spacing_zyx: tuple[float, float, float],
                     origins: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signed mesh volume and surface area of each mask of a boolean (N, z, y, x) batch.

    The signed-tetrahedron volume uses the coordinate origin at padded voxel ``origins[i]`` (default: the
    padded array's voxel 0). It only matters where the mesh is not closed (inconsistent ambiguous faces), and
    is where pyradiomics puts it: its mask is cropped to the ROI bounding box and padded by one voxel.
    """
    masks = np.asarray(masks, dtype=bool)
    n, d0, d1, d2 = masks.shape
    padded = np.zeros((n, d0 + 2, d1 + 2, d2 + 2), dtype=bool)
    padded[:, 1:-1, 1:-1, 1:-1] = masks
    return mesh_volume_area_padded(padded, spacing_zyx, origins)


def mesh_volume_area_padded(padded: np.ndarray, spacing_zyx: tuple[float, float, float],
                            origins: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`mesh_volume_area` of a C-contiguous boolean batch already zero-padded by one voxel on every side.

    One compiled pass (`kernels.cube_histogram`) counts each crop's surface-cube configurations and sums their
    positions against the linear volume term; both tables are then applied per crop.
    """
    from napari_medgen.radiomics import kernels

    const, linear = volume_tables()
    hist, pos_sum = kernels.cube_histogram(np.ascontiguousarray(padded).view(np.uint8), linear)
    if origins is not None:
        pos_sum = pos_sum - (hist @ linear * np.asarray(origins, dtype=np.int64)).sum(1)
    volume_index = (hist @ const) / 48.0 + pos_sum / 24.0
    return volume_index * float(np.prod(spacing_zyx)), hist @ area_table(spacing_zyx)

"""3D shape features from a marching-cubes surface mesh and the voxel point cloud (pyradiomics definitions).

The mesh is built on the zero-padded binary mask at iso-level 0.5 with the classic (Lorensen) case table, so
all vertices lie on voxel-edge midpoints. Volume is the signed-tetrahedron sum (divergence theorem); diameters
use the mesh vertices; axis lengths come from the eigenvalues of the voxel-centre covariance.
"""

from __future__ import annotations

import contextlib

import numpy as np

FEATURES = (
    "MeshVolume", "VoxelVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity", "Maximum3DDiameter",
    "Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow", "MajorAxisLength",
    "MinorAxisLength", "LeastAxisLength", "Elongation", "Flatness",
)


def _max_distance(points: np.ndarray) -> float:
    """Largest pairwise distance; only convex-hull vertices can be its endpoints."""
    if len(points) < 2:
        return 0.0
    pts = points
    if len(points) > 64:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # degenerate (flat) cloud: fall back to a 2D hull or brute force
            pts = _planar_hull(points)
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff * diff).sum(-1).max()))


def _planar_hull(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    keep = np.ptp(points, axis=0) > 0
    if keep.sum() == 2:
        try:
            return points[ConvexHull(points[:, keep]).vertices]
        except (QhullError, ValueError):
            pass
    return points


def _max_in_planes(points: np.ndarray, axis: int) -> float:
    """Largest distance between vertices sharing the same coordinate along ``axis``."""
    best = 0.0
    keys = np.round(points[:, axis], 6)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    splits = np.nonzero(np.diff(sorted_keys))[0] + 1
    for group in np.split(order, splits):
        if len(group) > 1:
            best = max(best, _max_in_plane(points[group], axis))
    return best


def _max_in_plane(points: np.ndarray, axis: int) -> float:
    other = [a for a in range(3) if a != axis]
    pts = points[:, other]
    if len(pts) > 32:
        from scipy.spatial import ConvexHull, QhullError

        with contextlib.suppress(QhullError, ValueError):
            pts = pts[ConvexHull(pts).vertices]
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff * diff).sum(-1).max()))


def mesh(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (physical, z/y/x columns) and triangle faces of the ROI surface."""
    from skimage.measure import marching_cubes

    padded = np.pad(mask.astype(np.float32), 1)
    spacing_zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing_zyx, method="lorensen",
                                        allow_degenerate=True)
    return verts, faces


def shape_features(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> dict[str, float]:
    """All non-deprecated pyradiomics 3D shape features of a boolean (z, y, x) mask."""
    verts, faces = mesh(mask, spacing_xyz)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = float(0.5 * np.linalg.norm(cross, axis=1).sum())
    volume = float(abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    n_vox = int(mask.sum())
    voxel_volume = n_vox * float(np.prod(spacing_xyz))
    out: dict[str, float] = {"MeshVolume": volume, "VoxelVolume": voxel_volume, "SurfaceArea": area}
    out["SurfaceVolumeRatio"] = area / volume if volume > 0 else float("nan")
    out["Sphericity"] = (36 * np.pi * volume**2) ** (1.0 / 3.0) / area if area > 0 else float("nan")
    uverts = np.unique(verts, axis=0)
    out["Maximum3DDiameter"] = _max_distance(uverts)
    out["Maximum2DDiameterSlice"] = _max_in_planes(uverts, 0)
    out["Maximum2DDiameterColumn"] = _max_in_planes(uverts, 1)
    out["Maximum2DDiameterRow"] = _max_in_planes(uverts, 2)
    coords = np.argwhere(mask).astype(np.float64) * np.array([spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]])
    eig = np.sort(np.linalg.eigvalsh(np.cov(coords, rowvar=False, bias=True))) if n_vox > 1 else np.zeros(3)
    eig = np.where((eig < 0) & (eig > -1e-10), 0.0, eig)
    least, minor, major = eig
    out["MajorAxisLength"] = float(4 * np.sqrt(major))
    out["MinorAxisLength"] = float(4 * np.sqrt(minor))
    out["LeastAxisLength"] = float(4 * np.sqrt(least))
    out["Elongation"] = float(np.sqrt(minor / major)) if major > 0 else float("nan")
    out["Flatness"] = float(np.sqrt(least / major)) if major > 0 else float("nan")
    return out

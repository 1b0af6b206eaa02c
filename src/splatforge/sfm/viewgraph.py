"""The verified view graph: which photos overlap, which can be posed at all, and why not.

Nodes are the images of a COLMAP database; an edge joins two images whose matches passed
geometric verification with at least ``min_inliers`` inliers (COLMAP's
``TwoViewGeometryOptions.min_num_inliers``, 15 by default). Only images in one connected
component can share a reconstruction, so the largest component is the most SfM can pose, and
an image outside it is explained by the numbers the stage already has: features found,
verified neighbours, the component it fell into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: An image with fewer features than this fraction of the set's median is "plain or blurred".
FEW_FEATURES_FRACTION = 0.25
#: ... or fewer than this many features at all.
FEW_FEATURES_ABS = 100


@dataclass
class ViewGraph:
    """Verified view graph of a COLMAP database.

    Attributes:
        names: image names, sorted.
        num_features: name -> SIFT keypoints found.
        neighbors: name -> {neighbour name: verified inlier matches}.
        components: connected components, largest first (ties by first name), each sorted.
    """

    names: list[str]
    num_features: dict[str, int]
    neighbors: dict[str, dict[str, int]]
    components: list[list[str]] = field(default_factory=list)

    @classmethod
    def from_database(cls, pycolmap: Any, db_path: Path, min_inliers: int = 15) -> "ViewGraph":
        """Read images, keypoint counts and verified pairs from ``db_path``."""
        with pycolmap.Database.open(db_path) as db:
            images = {im.image_id: im.name for im in db.read_all_images()}
            nfeat = {images[i]: int(db.num_keypoints_for_image(i)) for i in images}
            pair_ids, geoms = db.read_two_view_geometries()
        neighbors: dict[str, dict[str, int]] = {n: {} for n in images.values()}
        for pid, g in zip(pair_ids, geoms):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            k = len(g.inlier_matches)
            if k >= min_inliers and a in images and b in images:
                neighbors[images[a]][images[b]] = k
                neighbors[images[b]][images[a]] = k
        graph = cls(sorted(images.values()), nfeat, neighbors)
        graph.components = graph._components()
        return graph

    def _components(self) -> list[list[str]]:
        seen: set[str] = set()
        comps = []
        for start in self.names:
            if start in seen:
                continue
            stack, comp = [start], []
            seen.add(start)
            while stack:
                v = stack.pop()
                comp.append(v)
                for w in self.neighbors[v]:
                    if w not in seen:
                        seen.add(w)
                        stack.append(w)
            comps.append(sorted(comp))
        return sorted(comps, key=lambda c: (-len(c), c[0]))

    @property
    def largest(self) -> list[str]:
        """The largest connected component (the images SfM can hope to pose together)."""
        return self.components[0] if self.components else []

    def component_of(self, name: str) -> int:
        """0-based index of ``name``'s component (0 = the largest)."""
        for i, c in enumerate(self.components):
            if name in c:
                return i
        raise KeyError(name)

    def summary(self) -> dict[str, Any]:
        """Counts for ``sfm.json``: verified pairs and component sizes."""
        return {"verified_pairs": sum(len(v) for v in self.neighbors.values()) // 2,
                "component_sizes": [len(c) for c in self.components]}

    def explain(self, name: str, registered: set[str]) -> dict[str, Any]:
        """Why ``name`` has no pose, in words a photographer understands, with the numbers.

        Args:
            name: an image of the graph that is not registered.
            registered: names of the images that have a pose.

        Returns:
            ``{"image", "reason", "features", "verified_neighbors", "component",
            "component_size"}``; ``reason`` is one of ``few_features``, ``no_overlap``,
            ``separate_group``, ``not_posed`` and ``message`` says it in words.
        """
        feats = self.num_features.get(name, 0)
        median = float(np.median(list(self.num_features.values()))) if self.num_features else 0
        nbrs = self.neighbors.get(name, {})
        comp = self.component_of(name)
        size = len(self.components[comp])
        info = {"image": name, "features": feats, "verified_neighbors": len(nbrs),
                "component": comp + 1, "component_size": size}
        if feats < FEW_FEATURES_ABS or feats < FEW_FEATURES_FRACTION * median:
            info["reason"] = "few_features"
            info["message"] = (
                f"only {feats} features found (the set's median is {median:.0f}): the photo "
                "is probably blurred, badly exposed, or shows a plain, untextured surface")
        elif not nbrs:
            info["reason"] = "no_overlap"
            info["message"] = (
                "it shares no reliable matches with any other photo: it does not overlap the "
                "rest (a different subject, or taken too far from the other viewpoints)")
        elif comp > 0:
            info["reason"] = "separate_group"
            info["message"] = (
                f"it overlaps only with a separate group of {size} photos that has no "
                f"overlap with the main group of {len(self.largest)}: take photos that link "
                "the two parts")
        else:
            best = max(nbrs.values())
            posed = sum(1 for w in nbrs if w in registered)
            info["reason"] = "not_posed"
            info["message"] = (
                f"it overlaps {len(nbrs)} photos ({posed} of them posed, at most {best} "
                "matching points with one), too weakly for a reliable pose: add photos "
                "between it and its neighbours")
        return info

"""The browser viewer: a viser server showing one or more splat models.

The splats are rendered in the browser (viser's ``add_gaussian_splats``, client-side WebGL),
so the serving machine needs no GPU. Each model gets a scene node ``/models/<i>`` holding its
splats, training-camera frustums and SfM points, a GUI folder with a visibility checkbox and
transform controls (a gizmo that moves the whole model), and the page has global toggles for
cameras and SfM points, a "set up direction from this view" button, and a note when a model is
subsampled for display (:func:`splatforge.viewer.data.display_splats`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import (
    DEFAULT_MAX_SPLATS,
    DisplaySplats,
    ViewCamera,
    ViewSource,
    display_splats,
    up_direction,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _scene_extent(cameras: list[ViewCamera], means: np.ndarray | None) -> tuple[np.ndarray,
                                                                                float]:
    """(centre [3], radius) of the content: the cameras' spread when there are >= 2 cameras,
    else the 5-95 % box of the splat means; radius >= 1e-3."""
    if len(cameras) >= 2:
        c = np.stack([cam.camtoworld[:3, 3] for cam in cameras])
        centre = c.mean(0)
        return centre, max(float(np.linalg.norm(c - centre, axis=1).max()), 1e-3)
    if means is not None and len(means):
        lo, hi = np.percentile(means, [5, 95], axis=0)
        return (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    return np.zeros(3), 1.0


@dataclass
class ModelView:
    """One model on the page (returned by :meth:`SplatViewer.add_model`).

    Attributes:
        index: position on the page (0-based); its scene node is ``/models/<index>``.
        name: label in the GUI.
        display: the splats as last sent (None before any).
        cameras: the frustums' cameras (model frame).
    """

    index: int
    name: str
    frame: Any
    gizmo: Any
    folder: Any
    splat_handle: Any = None
    display: DisplaySplats | None = None
    cameras: list[ViewCamera] = field(default_factory=list)
    camera_handles: list[Any] = field(default_factory=list)
    points_handle: Any = None
    visible_checkbox: Any = None
    info_markdown: Any = None

    @property
    def root(self) -> str:
        return f"/models/{self.index}"


class SplatViewer:
    """A running viser server with splat models, cameras and SfM points.

    Args:
        host: address to bind (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: TCP port (0: any free port; when taken, viser tries the next ones).
        max_splats: display budget per model; larger models are randomly subsampled and the
            page says so.
        label: title of the GUI panel.

    The server runs in background threads; :meth:`stop` ends it.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 max_splats: int = DEFAULT_MAX_SPLATS, label: str = "splatforge"):
        import viser

        if max_splats < 1:
            from ..errors import ConfigError

            raise ConfigError(f"max_splats: must be >= 1, got {max_splats}")
        self.max_splats = int(max_splats)
        self.server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        self.host = host
        self.models: list[ModelView] = []
        self._lock = threading.RLock()
        self._up_set = False
        self._initial_camera_set = False
        self.server.gui.configure_theme(control_width="medium")
        with self.server.gui.add_folder("Display"):
            self.show_cameras = self.server.gui.add_checkbox("Training cameras", True)
            self.show_points = self.server.gui.add_checkbox("SfM points", False)
            self.up_button = self.server.gui.add_button(
                "Set up direction from view",
                hint="Make the current view's up the scene's up (orbit controls, grid)")
            self.notice = self.server.gui.add_markdown("")
        self.show_cameras.on_update(lambda _: self._apply_toggles())
        self.show_points.on_update(lambda _: self._apply_toggles())
        self.up_button.on_click(self._on_up_button)

    # --- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        """``http://host:port/`` (``0.0.0.0`` shown as ``127.0.0.1``)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def num_clients(self) -> int:
        """Browsers connected now."""
        return len(self.server.get_clients())

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.server.stop()

    # --- models ----------------------------------------------------------------------------

    def add_model(self, name: str) -> ModelView:
        """Add an empty model slot (scene node, GUI folder, visibility and transform controls);
        fill it with :meth:`set_splats`, :meth:`set_cameras`, :meth:`set_points`."""
        with self._lock:
            i = len(self.models)
            frame = self.server.scene.add_frame(f"/models/{i}", show_axes=False)
            gizmo = self.server.scene.add_transform_controls(f"/gizmos/{i}", scale=1.0,
                                                             visible=False)
            folder = self.server.gui.add_folder(f"Model {i}: {name}")
            mv = ModelView(i, name, frame, gizmo, folder)
            with folder:
                mv.info_markdown = self.server.gui.add_markdown("")
                mv.visible_checkbox = self.server.gui.add_checkbox("Visible", True)
                move = self.server.gui.add_checkbox("Transform controls", False)
                reset = self.server.gui.add_button("Reset transform")

            @mv.visible_checkbox.on_update
            def _(_event) -> None:
                mv.frame.visible = mv.visible_checkbox.value

            @move.on_update
            def _(_event) -> None:
                mv.gizmo.visible = move.value

            @gizmo.on_update
            def _(_event) -> None:
                mv.frame.wxyz = mv.gizmo.wxyz
                mv.frame.position = mv.gizmo.position

            @reset.on_click
            def _(_event) -> None:
                self.set_model_transform(mv, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

            self.models.append(mv)
            return mv

    def set_model_transform(self, mv: ModelView, wxyz: Any, position: Any) -> None:
        """Place model ``mv`` (rotation ``wxyz`` [4], translation ``position`` [3], applied to
        its splats, cameras and points), as its transform controls do when dragged."""
        mv.gizmo.wxyz = tuple(float(v) for v in wxyz)
        mv.gizmo.position = tuple(float(v) for v in position)
        mv.frame.wxyz = mv.gizmo.wxyz
        mv.frame.position = mv.gizmo.position

    def add_source(self, src: ViewSource) -> ModelView:
        """Add a model read by :func:`splatforge.viewer.data.load_view_source`."""
        mv = self.add_model(src.name)
        self.set_cameras(mv, src.cameras, points_hint=src.splats)
        self.set_points(mv, src.points, src.points_rgb)
        if src.splats is not None:
            self.set_splats(mv, src.splats)
        else:
            self._set_info(mv, "no splats (cameras and SfM points only)")
        return mv

    def set_splats(self, mv: ModelView, splats: dict[str, np.ndarray]) -> DisplaySplats:
        """Show (or replace) the model's splats (raw parameters, source frame; see
        :func:`~splatforge.viewer.data.display_splats`). Returns what was sent."""
        disp = display_splats(splats, self.max_splats)
        with self._lock:
            mv.splat_handle = self.server.scene.add_gaussian_splats(
                f"{mv.root}/splats", centers=disp.centers, covariances=disp.covariances,
                rgbs=disp.rgbs, opacities=disp.opacities)
            mv.display = disp
            self._set_info(mv, f"{disp.total:,} splats"
                           + (f", **{disp.shown:,} shown** (subsampled)" if disp.subsampled
                              else ""))
            self._update_notice()
            self._place_initial_camera(mv)
        return disp

    def set_cameras(self, mv: ModelView, cameras: list[ViewCamera],
                    points_hint: dict[str, np.ndarray] | None = None) -> None:
        """Draw the training cameras as frustums; clicking one moves that browser's camera to
        it (pose and field of view). The first model with cameras sets the scene's up
        direction (:func:`~splatforge.viewer.data.up_direction`)."""
        import viser.transforms as vtf

        with self._lock:
            for h in mv.camera_handles:
                h.remove()
            mv.camera_handles = []
            mv.cameras = list(cameras)
            means = None if points_hint is None else np.asarray(points_hint["means"])
            _, radius = _scene_extent(cameras, means)
            for j, cam in enumerate(cameras):
                wxyz = vtf.SO3.from_matrix(cam.camtoworld[:3, :3]).wxyz
                h = self.server.scene.add_camera_frustum(
                    f"{mv.root}/cameras/{j}", fov=cam.fov_y, aspect=cam.aspect,
                    scale=0.025 * radius, thickness=0.0015 * radius, color=(230, 80, 30),
                    wxyz=wxyz, position=cam.camtoworld[:3, 3],
                    visible=self.show_cameras.value)
                h.on_click(lambda event, mv=mv, cam=cam: self.look_through(event.client, mv,
                                                                           cam))
                mv.camera_handles.append(h)
            if cameras and not self._up_set:
                self._up_set = True
                self.server.scene.set_up_direction(up_direction(cameras))
            self._place_initial_camera(mv)

    def set_points(self, mv: ModelView, points: np.ndarray, rgb: np.ndarray) -> None:
        """Draw SfM points (toggled by the "SfM points" checkbox)."""
        pts = np.asarray(points, np.float32).reshape(-1, 3)
        if not len(pts):
            return
        _, radius = _scene_extent(mv.cameras, pts)
        with self._lock:
            mv.points_handle = self.server.scene.add_point_cloud(
                f"{mv.root}/points", points=pts, colors=np.asarray(rgb, np.uint8).reshape(-1, 3),
                point_size=0.004 * radius, visible=self.show_points.value)

    def model_pose(self, mv: ModelView, camtoworld: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        """(wxyz, position) in the world of a camera-to-world pose given in ``mv``'s frame
        (the model's transform-controls pose applied)."""
        import viser.transforms as vtf

        T_model = vtf.SE3.from_rotation_and_translation(vtf.SO3(np.asarray(mv.frame.wxyz)),
                                                        np.asarray(mv.frame.position))
        T_cam = vtf.SE3.from_matrix(np.asarray(camtoworld, np.float64))
        T = T_model @ T_cam
        return T.rotation().wxyz, T.translation()

    def look_through(self, client: Any, mv: ModelView, cam: ViewCamera) -> None:
        """Move ``client``'s camera to training camera ``cam`` of model ``mv``."""
        wxyz, pos = self.model_pose(mv, cam.camtoworld)
        with client.atomic():
            client.camera.fov = cam.fov_y
            client.camera.position = pos
            client.camera.wxyz = wxyz

    # --- internals -------------------------------------------------------------------------

    def _set_info(self, mv: ModelView, text: str) -> None:
        mv.info_markdown.content = text

    def _update_notice(self) -> None:
        sub = [m for m in self.models if m.display is not None and m.display.subsampled]
        self.notice.content = "" if not sub else (
            "Large model: showing a random subset of "
            + "; ".join(f"{m.display.shown:,} of {m.display.total:,} splats ({m.name})"
                        for m in sub)
            + f" (display budget {self.max_splats:,}; `--max-splats` to change)")

    def _apply_toggles(self) -> None:
        with self._lock:
            for mv in self.models:
                for h in mv.camera_handles:
                    h.visible = self.show_cameras.value
                if mv.points_handle is not None:
                    mv.points_handle.visible = self.show_points.value

    def _on_up_button(self, event: Any) -> None:
        import viser.transforms as vtf

        client = event.client
        if client is None:
            return
        R = vtf.SO3(np.asarray(client.camera.wxyz)).as_matrix()
        self.set_up(-R[:, 1])

    def set_up(self, up: np.ndarray) -> None:
        """Make ``up`` [3] the scene's up direction (orbit controls and grid)."""
        up = np.asarray(up, np.float64)
        up = up / max(np.linalg.norm(up), 1e-12)
        self._up_set = True
        self.server.scene.set_up_direction(up)
        for client in self.server.get_clients().values():
            try:
                client.camera.up_direction = up
            except (AssertionError, ValueError):  # camera not reported yet / degenerate
                pass
        self.up = up

    def _place_initial_camera(self, mv: ModelView) -> None:
        """First time content exists: start browsers at the first training camera pulled
        back a little, looking at the content's centre."""
        if self._initial_camera_set:
            return
        means = None if mv.display is None else mv.display.centers
        if not mv.cameras and means is None:
            return
        centre, radius = _scene_extent(mv.cameras, means)
        if mv.cameras:  # behind the first training camera, looking where it looks
            cam = mv.cameras[0]
            _, cam_pos = self.model_pose(mv, cam.camtoworld)
            forward = cam.camtoworld[:3, 2]
            dist = max(float(np.linalg.norm(centre - cam_pos)), 1e-3)
            centre = cam_pos + forward * dist
            pos = cam_pos - forward * 0.25 * dist
            up = -cam.camtoworld[:3, 1]
        else:
            up = np.array([0.0, 0.0, 1.0])
            pos = centre + np.array([0.0, -2.0, 0.5]) * radius
        if np.linalg.norm(pos - centre) < 1e-9:
            return
        self._initial_camera_set = True
        self.server.initial_camera.position = tuple(float(v) for v in pos)
        self.server.initial_camera.look_at = tuple(float(v) for v in centre)
        self.server.initial_camera.up = tuple(float(v) for v in up)

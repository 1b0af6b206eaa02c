// A small WebGL2 renderer of 3D Gaussian splats from an antimatter15 ".splat" file
// (32 bytes per splat: float32 x,y,z; float32 linear scales; uint8 RGBA; uint8 quaternion
// w,x,y,z as q*128+128 -- see splatforge/export/splat.py).
//
// Method (Kerbl et al. 2023, "3D Gaussian Splatting", Sec. 4; Zwicker et al. 2002, EWA splatting):
// each Gaussian's 3D covariance S = R diag(s)^2 R^T is projected to the image with the
// Jacobian J of the pinhole projection at its centre, S' = J W S W^T J^T (+0.3 px^2 on the
// diagonal as a low-pass filter); a screen-space quad spans +-2 standard deviations along the
// eigenvectors of S'; the fragment weight is exp(-d^2/2) times the opacity; splats are sorted
// back to front by view depth on the CPU (16-bit counting sort) and blended with
// premultiplied alpha (ONE, ONE_MINUS_SRC_ALPHA). Cameras use OpenCV axes (x right, y down,
// z forward) in the frame of the file, as cameras.json gives them.
"use strict";

(function () {
  const VERT = `#version 300 es
precision highp float;
in vec2 a_corner;
in vec3 a_center;
in vec3 a_covA;   // xx xy xz
in vec3 a_covB;   // yy yz zz
in vec4 a_color;
uniform mat4 u_view;      // world -> camera (OpenCV axes)
uniform vec2 u_focal;     // fx, fy (pixels)
uniform vec2 u_viewport;  // width, height (pixels)
out vec4 v_color;
out vec2 v_pos;
void main() {
  vec4 cam = u_view * vec4(a_center, 1.0);
  if (cam.z < 0.02) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  float z = cam.z;
  mat3 S = mat3(a_covA.x, a_covA.y, a_covA.z, a_covA.y, a_covB.x, a_covB.y, a_covA.z, a_covB.y, a_covB.z);
  mat3 J = mat3(u_focal.x / z, 0.0, 0.0,
                0.0, u_focal.y / z, 0.0,
                -u_focal.x * cam.x / (z * z), -u_focal.y * cam.y / (z * z), 0.0);
  mat3 T = J * mat3(u_view);
  mat3 C = T * S * transpose(T);
  float a = C[0][0] + 0.3, b = C[0][1], d = C[1][1] + 0.3;
  float mid = 0.5 * (a + d);
  float rad = length(vec2(0.5 * (a - d), b));
  float l1 = mid + rad, l2 = max(mid - rad, 0.1);
  vec2 v1 = abs(b) > 1e-9 ? normalize(vec2(b, l1 - a)) : (a >= d ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 major = min(sqrt(2.0 * l1), 2048.0) * v1;
  vec2 minor = min(sqrt(2.0 * l2), 2048.0) * vec2(v1.y, -v1.x);
  vec2 centre = vec2(u_focal.x * cam.x / z, u_focal.y * cam.y / z) + 0.5 * u_viewport;
  vec2 px = centre + a_corner.x * major + a_corner.y * minor;
  gl_Position = vec4(px.x / u_viewport.x * 2.0 - 1.0, 1.0 - px.y / u_viewport.y * 2.0, 0.0, 1.0);
  v_color = a_color;
  v_pos = a_corner;
}`;
  const FRAG = `#version 300 es
precision highp float;
in vec4 v_color;
in vec2 v_pos;
out vec4 fragColor;
void main() {
  float A = -dot(v_pos, v_pos);
  if (A < -4.0) discard;
  float w = exp(A) * v_color.a;
  fragColor = vec4(w * v_color.rgb, w);
}`;

  // --- small 3-vector / matrix helpers (row-major 4x4 as arrays of 16) ---------------------
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
  const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const norm = a => { const n = Math.hypot(a[0], a[1], a[2]) || 1; return scale(a, 1 / n); };
  // rotate v about unit axis k by angle t (Rodrigues)
  const rotate = (v, k, t) => {
    const c = Math.cos(t), s = Math.sin(t);
    return add(add(scale(v, c), scale(cross(k, v), s)), scale(k, dot(k, v) * (1 - c)));
  };

  function parseSplat(buffer) {
    const n = Math.floor(buffer.byteLength / 32);
    const f = new Float32Array(buffer, 0, n * 8);
    const u = new Uint8Array(buffer, 0, n * 32);
    const centers = new Float32Array(n * 3), cov = new Float32Array(n * 6), colors = new Uint8Array(n * 4);
    for (let i = 0; i < n; i++) {
      centers[3 * i] = f[8 * i]; centers[3 * i + 1] = f[8 * i + 1]; centers[3 * i + 2] = f[8 * i + 2];
      const s = [f[8 * i + 3], f[8 * i + 4], f[8 * i + 5]];
      for (let c = 0; c < 4; c++) colors[4 * i + c] = u[32 * i + 24 + c];
      let w = (u[32 * i + 28] - 128) / 128, x = (u[32 * i + 29] - 128) / 128,
        y = (u[32 * i + 30] - 128) / 128, z = (u[32 * i + 31] - 128) / 128;
      const qn = Math.hypot(w, x, y, z) || 1; w /= qn; x /= qn; y /= qn; z /= qn;
      const R = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
      const M = [R[0] * s[0], R[1] * s[1], R[2] * s[2], R[3] * s[0], R[4] * s[1], R[5] * s[2], R[6] * s[0], R[7] * s[1], R[8] * s[2]];
      const m = (r, c) => M[3 * r] * M[3 * c] + M[3 * r + 1] * M[3 * c + 1] + M[3 * r + 2] * M[3 * c + 2];
      cov[6 * i] = m(0, 0); cov[6 * i + 1] = m(0, 1); cov[6 * i + 2] = m(0, 2);
      cov[6 * i + 3] = m(1, 1); cov[6 * i + 4] = m(1, 2); cov[6 * i + 5] = m(2, 2);
    }
    return { n, centers, cov, colors };
  }

  class SplatView {
    // canvas: a <canvas>; buffer: the .splat bytes (ArrayBuffer); cameras: cameras.json entries
    constructor(canvas, buffer, cameras) {
      this.canvas = canvas;
      const gl = canvas.getContext("webgl2", { alpha: false, antialias: false, preserveDrawingBuffer: true, premultipliedAlpha: false });
      if (!gl) throw new Error("this browser has no WebGL2");
      this.gl = gl;
      this.data = parseSplat(buffer);
      this.count = this.data.n;
      this.drawn = 0;
      this.visible = true;  // false: only the background (a reference image)
      this.background = [0.08, 0.09, 0.11];
      this.setupCamera(cameras || []);
      this.setupGL();
      this.bindInput();
      this.resize();
      new ResizeObserver(() => this.resize()).observe(canvas);
    }

    setupCamera(cameras) {
      const d = this.data;
      let cam = cameras.slice().sort((a, b) => String(a.img_name).localeCompare(String(b.img_name)))[0];
      if (cam) {
        const R = cam.rotation;  // camera-to-world rotation, rows
        this.pos = cam.position.slice();
        this.right = [R[0][0], R[1][0], R[2][0]];
        this.down = [R[0][1], R[1][1], R[2][1]];
        this.fwd = [R[0][2], R[1][2], R[2][2]];
        this.aspect = cam.width / cam.height;
        this.fovY = 2 * Math.atan(cam.height / (2 * cam.fy));
        let up = [0, 0, 0];
        for (const c of cameras) up = sub(up, [c.rotation[0][1], c.rotation[1][1], c.rotation[2][1]]);
        this.up = norm(up);
      } else {  // no cameras: look at the centroid along +z
        let c = [0, 0, 0];
        for (let i = 0; i < d.n; i++) c = add(c, [d.centers[3 * i], d.centers[3 * i + 1], d.centers[3 * i + 2]]);
        c = scale(c, 1 / Math.max(d.n, 1));
        let r = 0;
        for (let i = 0; i < d.n; i++) r += Math.hypot(d.centers[3 * i] - c[0], d.centers[3 * i + 1] - c[1], d.centers[3 * i + 2] - c[2]);
        r = r / Math.max(d.n, 1) || 1;
        this.pos = sub(c, [0, 0, 3 * r]);
        this.right = [1, 0, 0]; this.down = [0, 1, 0]; this.fwd = [0, 0, 1];
        this.aspect = 4 / 3; this.fovY = 50 * Math.PI / 180; this.up = [0, -1, 0];
      }
      // orbit target: on the optical axis at the median depth of the splats in front
      const depths = [];
      for (let i = 0; i < d.n; i += Math.max(1, Math.floor(d.n / 5000))) {
        const z = dot(sub([d.centers[3 * i], d.centers[3 * i + 1], d.centers[3 * i + 2]], this.pos), this.fwd);
        if (z > 0) depths.push(z);
      }
      depths.sort((a, b) => a - b);
      const dist = depths.length ? depths[depths.length >> 1] : 1;
      this.target = add(this.pos, scale(this.fwd, dist));
    }

    setupGL() {
      const gl = this.gl;
      const sh = (type, src) => {
        const s = gl.createShader(type);
        gl.shaderSource(s, src); gl.compileShader(s);
        if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
        return s;
      };
      const p = gl.createProgram();
      gl.attachShader(p, sh(gl.VERTEX_SHADER, VERT)); gl.attachShader(p, sh(gl.FRAGMENT_SHADER, FRAG));
      gl.linkProgram(p);
      if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
      this.prog = p;
      gl.useProgram(p);
      this.vao = gl.createVertexArray();
      gl.bindVertexArray(this.vao);
      const quad = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, quad);
      gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-2, -2, 2, -2, 2, 2, -2, 2]), gl.STATIC_DRAW);
      const loc = n => gl.getAttribLocation(p, n);
      gl.enableVertexAttribArray(loc("a_corner"));
      gl.vertexAttribPointer(loc("a_corner"), 2, gl.FLOAT, false, 0, 0);
      this.fbuf = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, this.fbuf);
      for (const [name, off] of [["a_center", 0], ["a_covA", 12], ["a_covB", 24]]) {
        gl.enableVertexAttribArray(loc(name));
        gl.vertexAttribPointer(loc(name), 3, gl.FLOAT, false, 36, off);
        gl.vertexAttribDivisor(loc(name), 1);
      }
      this.cbuf = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, this.cbuf);
      gl.enableVertexAttribArray(loc("a_color"));
      gl.vertexAttribPointer(loc("a_color"), 4, gl.UNSIGNED_BYTE, true, 0, 0);
      gl.vertexAttribDivisor(loc("a_color"), 1);
      this.uView = gl.getUniformLocation(p, "u_view");
      this.uFocal = gl.getUniformLocation(p, "u_focal");
      this.uViewport = gl.getUniformLocation(p, "u_viewport");
      this.sortedF = new Float32Array(this.count * 9);
      this.sortedC = new Uint8Array(this.count * 4);
      this.depthKey = new Uint16Array(this.count);
      this.bucket = new Uint32Array(65536);
      this.order = new Uint32Array(this.count);
      gl.disable(gl.DEPTH_TEST);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    }

    // back-to-front order by depth along the view axis (counting sort on 16-bit keys)
    sort() {
      const d = this.data, n = this.count, f = this.fwd, p = this.pos;
      let lo = Infinity, hi = -Infinity;
      const depth = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const z = (d.centers[3 * i] - p[0]) * f[0] + (d.centers[3 * i + 1] - p[1]) * f[1] + (d.centers[3 * i + 2] - p[2]) * f[2];
        depth[i] = z; if (z < lo) lo = z; if (z > hi) hi = z;
      }
      const span = (hi - lo) || 1;
      this.bucket.fill(0);
      for (let i = 0; i < n; i++) { const k = 65535 - Math.floor((depth[i] - lo) / span * 65535); this.depthKey[i] = k; this.bucket[k]++; }
      for (let k = 1; k < 65536; k++) this.bucket[k] += this.bucket[k - 1];
      for (let i = n - 1; i >= 0; i--) this.order[--this.bucket[this.depthKey[i]]] = i;
      for (let j = 0; j < n; j++) {
        const i = this.order[j];
        this.sortedF.set(d.centers.subarray(3 * i, 3 * i + 3), 9 * j);
        this.sortedF.set(d.cov.subarray(6 * i, 6 * i + 6), 9 * j + 3);
        this.sortedC.set(d.colors.subarray(4 * i, 4 * i + 4), 4 * j);
      }
      const gl = this.gl;
      gl.bindBuffer(gl.ARRAY_BUFFER, this.fbuf);
      gl.bufferData(gl.ARRAY_BUFFER, this.sortedF, gl.DYNAMIC_DRAW);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.cbuf);
      gl.bufferData(gl.ARRAY_BUFFER, this.sortedC, gl.DYNAMIC_DRAW);
    }

    resize() {
      const dpr = Math.min(window.devicePixelRatio || 1, 2);
      const w = Math.max(2, Math.round(this.canvas.clientWidth * dpr));
      const h = Math.max(2, Math.round(w / this.aspect));
      this.canvas.style.height = `${Math.round(w / this.aspect / dpr)}px`;
      if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
      this.request();
    }

    request() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    draw() {
      const gl = this.gl, W = this.canvas.width, H = this.canvas.height;
      this.sort();
      const r = this.right, dn = this.down, f = this.fwd, p = this.pos;
      // world -> camera, column-major for GL: rows are right, down, forward
      const view = new Float32Array([r[0], dn[0], f[0], 0, r[1], dn[1], f[1], 0, r[2], dn[2], f[2], 0,
        -dot(r, p), -dot(dn, p), -dot(f, p), 1]);
      const fy = H / (2 * Math.tan(this.fovY / 2));
      gl.viewport(0, 0, W, H);
      gl.clearColor(this.background[0], this.background[1], this.background[2], 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.useProgram(this.prog);
      gl.bindVertexArray(this.vao);
      gl.uniformMatrix4fv(this.uView, false, view);
      gl.uniform2f(this.uFocal, fy, fy);
      gl.uniform2f(this.uViewport, W, H);
      if (this.visible) gl.drawArraysInstanced(gl.TRIANGLE_FAN, 0, 4, this.count);
      this.drawn++;
      this.canvas.dataset.drawn = String(this.drawn);
    }

    // orbit about the target: yaw about the scene's up, pitch about the camera's right
    orbit(yaw, pitch) {
      const t = this.target;
      let off = sub(this.pos, t);
      const up = this.up;
      for (const [which, ang] of [["up", yaw], ["right", pitch]]) {
        const axis = which === "up" ? up : this.right;
        off = rotate(off, axis, ang);
        this.right = norm(rotate(this.right, axis, ang));
        this.down = norm(rotate(this.down, axis, ang));
        this.fwd = norm(rotate(this.fwd, axis, ang));
      }
      this.pos = add(t, off);
      this.request();
    }

    zoom(factor) {
      this.pos = add(this.target, scale(sub(this.pos, this.target), factor));
      this.request();
    }

    bindInput() {
      const c = this.canvas;
      const pts = new Map();
      let last = null;
      c.addEventListener("pointerdown", e => { c.setPointerCapture(e.pointerId); pts.set(e.pointerId, [e.clientX, e.clientY]); });
      c.addEventListener("pointerup", e => { pts.delete(e.pointerId); last = null; });
      c.addEventListener("pointercancel", e => { pts.delete(e.pointerId); last = null; });
      c.addEventListener("pointermove", e => {
        if (!pts.has(e.pointerId)) return;
        const prev = pts.get(e.pointerId);
        pts.set(e.pointerId, [e.clientX, e.clientY]);
        if (pts.size === 1) {
          this.orbit(-(e.clientX - prev[0]) * 0.01, -(e.clientY - prev[1]) * 0.01);
        } else if (pts.size === 2) {  // pinch
          const [a, b] = [...pts.values()];
          const dist = Math.hypot(a[0] - b[0], a[1] - b[1]);
          if (last) this.zoom(Math.min(Math.max(last / dist, 0.8), 1.25));
          last = dist;
        }
      });
      c.addEventListener("wheel", e => { e.preventDefault(); this.zoom(Math.exp(e.deltaY * 0.001)); }, { passive: false });
      c.addEventListener("keydown", e => {
        const k = { ArrowLeft: [0.1, 0], ArrowRight: [-0.1, 0], ArrowUp: [0, 0.1], ArrowDown: [0, -0.1] }[e.key];
        if (k) { e.preventDefault(); this.orbit(k[0], k[1]); }
        if (e.key === "+" || e.key === "=") this.zoom(0.9);
        if (e.key === "-") this.zoom(1.1);
      });
    }
  }

  window.SplatView = SplatView;
  window.parseSplat = parseSplat;
})();

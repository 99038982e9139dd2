// The MGVQ encoder and grouped quantiser as hand-written WGSL compute kernels, one entry point
// per operation, for one image in CHW f32 layout. The host side is `htc_shared::mgvq_wgsl`
// (feature `wgsl`), which walks the same config and checkpoint keys as `htc_shared::mgvq`
// and records one dispatch per operation; `htc_shared::mgvq` stays the reference (the browser
// test compares the two paths' codes).
//
// Every kernel has the same bindings: `p` (sizes, see each kernel), three read-only inputs
// `a`, `b`, `c` (a 1-element placeholder where a kernel uses fewer) and the output `y`. One
// invocation per output element (or per pixel, for the norm and the quantiser); a dispatch
// wider than 65,535 workgroups spills into `y`, hence `index()`.

struct Params {
    n0: u32, n1: u32, n2: u32, n3: u32,
    n4: u32, n5: u32, n6: u32, n7: u32,
    eps: f32, pad0: f32, pad1: f32, pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;

fn index(id: vec3<u32>, n: vec3<u32>) -> u32 {
    return id.x + id.y * n.x * WG;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// A square k×k convolution, stride 1, "same" padding, `groups` groups (1: dense; the channel
// count: depthwise), optional bias and SiLU after it.
// n0 = in channels, n1 = out channels, n2 = height, n3 = width, n4 = k, n5 = groups,
// n6 = has bias, n7 = SiLU after. a = input [in, h, w], b = weight [out, in/groups, k, k]
// (PyTorch's layout), c = bias [out].
@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let h = p.n2;
    let w = p.n3;
    let hw = h * w;
    if (i >= p.n1 * hw) {
        return;
    }
    let o = i / hw;
    let yy = i32((i % hw) / w);
    let xx = i32(i % w);
    let k = p.n4;
    let r = i32(k / 2u);
    let cig = p.n0 / p.n5;
    let c0 = (o / (p.n1 / p.n5)) * cig;
    var acc = 0.0;
    if (p.n6 != 0u) {
        acc = c[o];
    }
    for (var j = 0u; j < cig; j++) {
        let xbase = (c0 + j) * hw;
        let wbase = (o * cig + j) * k * k;
        for (var ky = 0u; ky < k; ky++) {
            let sy = yy + i32(ky) - r;
            if (sy < 0 || sy >= i32(h)) {
                continue;
            }
            for (var kx = 0u; kx < k; kx++) {
                let sx = xx + i32(kx) - r;
                if (sx < 0 || sx >= i32(w)) {
                    continue;
                }
                acc += a[xbase + u32(sy) * w + u32(sx)] * b[wbase + ky * k + kx];
            }
        }
    }
    if (p.n7 != 0u) {
        acc = silu(acc);
    }
    y[i] = acc;
}

// The tiled convolutions below (`conv3t`, `conv1t`): each invocation computes four output
// channels o..o+3 of four pixels x0..x0+3 of one row (4 × 4 outputs), so each weight vector
// serves four pixels and each input value up to four channels' products. For `out / groups`
// a multiple of 4; b = the weight regrouped on the host as [out / 4, in / groups, k, k, 4].
// Sizes as `conv`; one invocation per group of four output channels, row and group of four
// columns.
struct Tile {
    inside: bool,
    // The group of four output channels, its first input channel, and the input channels
    // per group.
    o4: u32,
    c0: u32,
    cig: u32,
    yy: u32,
    x0: u32,
}

fn tile(i: u32) -> Tile {
    let wq = (p.n3 + 3u) / 4u;
    let tiles = p.n2 * wq;
    let o4 = i / tiles;
    let cig = p.n0 / p.n5;
    let c0 = (o4 * 4u / (p.n1 / p.n5)) * cig;
    return Tile(i < (p.n1 / 4u) * tiles, o4, c0, cig, (i % tiles) / wq, (i % wq) * 4u);
}

// The bias of channels o..o+3 (or zeros) for each of the four pixels.
fn bias4(o: u32) -> array<vec4<f32>, 4> {
    var v = vec4<f32>(0.0);
    if (p.n6 != 0u) {
        v = vec4<f32>(c[o], c[o + 1u], c[o + 2u], c[o + 3u]);
    }
    return array<vec4<f32>, 4>(v, v, v, v);
}

// The four weights (one per output channel) at offset t of the regrouped weight.
fn w4(t: u32) -> vec4<f32> {
    return vec4<f32>(b[t], b[t + 1u], b[t + 2u], b[t + 3u]);
}

// The input value at column `x` of the row starting at `row`, 0 outside the image.
fn at(row: u32, x: i32, w: u32) -> f32 {
    return select(0.0, a[row + u32(clamp(x, 0, i32(w) - 1))], x >= 0 && x < i32(w));
}

// Writes the tile's outputs that are in the image, after SiLU if n7 says so.
fn store4(t: Tile, acc: array<vec4<f32>, 4>) {
    let w = p.n3;
    let hw = p.n2 * w;
    let o = t.o4 * 4u;
    for (var j = 0u; j < 4u; j++) {
        if (t.x0 + j < w) {
            var v = acc[j];
            if (p.n7 != 0u) {
                v = v / (1.0 + exp(-v));
            }
            let at = t.yy * w + t.x0 + j;
            y[o * hw + at] = v.x;
            y[(o + 1u) * hw + at] = v.y;
            y[(o + 2u) * hw + at] = v.z;
            y[(o + 3u) * hw + at] = v.w;
        }
    }
}

// A 3×3 convolution, tiled. Kernel rows outside the image are skipped by bounds, columns
// read as zeros.
@compute @workgroup_size(64)
fn conv3t(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = tile(index(id, nw));
    if (!t.inside) {
        return;
    }
    let h = p.n2;
    let w = p.n3;
    let xs = i32(t.x0) - 1;
    let ky0 = select(0u, 1u, t.yy == 0u);
    let ky1 = min(3u, h + 1u - t.yy);
    var acc = bias4(t.o4 * 4u);
    for (var j = 0u; j < t.cig; j++) {
        let xbase = (t.c0 + j) * h * w;
        let wbase = (t.o4 * t.cig + j) * 36u;
        for (var ky = ky0; ky < ky1; ky++) {
            let row = xbase + (t.yy + ky - 1u) * w;
            let s0 = at(row, xs, w);
            let s1 = at(row, xs + 1, w);
            let s2 = at(row, xs + 2, w);
            let s3 = at(row, xs + 3, w);
            let s4 = at(row, xs + 4, w);
            let s5 = at(row, xs + 5, w);
            let k = wbase + ky * 12u;
            let w0 = w4(k);
            let w1 = w4(k + 4u);
            let w2 = w4(k + 8u);
            acc[0] += s0 * w0 + s1 * w1 + s2 * w2;
            acc[1] += s1 * w0 + s2 * w1 + s3 * w2;
            acc[2] += s2 * w0 + s3 * w1 + s4 * w2;
            acc[3] += s3 * w0 + s4 * w1 + s5 * w2;
        }
    }
    store4(t, acc);
}

// A 1×1 convolution, tiled.
@compute @workgroup_size(64)
fn conv1t(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = tile(index(id, nw));
    if (!t.inside) {
        return;
    }
    let w = p.n3;
    let x0 = i32(t.x0);
    var acc = bias4(t.o4 * 4u);
    for (var j = 0u; j < t.cig; j++) {
        let row = (t.c0 + j) * p.n2 * w + t.yy * w;
        let wv = w4((t.o4 * t.cig + j) * 4u);
        acc[0] += at(row, x0, w) * wv;
        acc[1] += at(row, x0 + 1, w) * wv;
        acc[2] += at(row, x0 + 2, w) * wv;
        acc[3] += at(row, x0 + 3, w) * wv;
    }
    store4(t, acc);
}

// TritonRMSNorm2d at each pixel, then an optional residual: y = [c +] a / rms(a) * w + bias.
// n0 = channels, n1 = pixels, n2 = has residual, eps. a = input [ch, hw], b = weight then
// bias [2 ch], c = residual [ch, hw]. One invocation per pixel.
@compute @workgroup_size(64)
fn rms_norm(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let px = index(id, nw);
    let ch = p.n0;
    let hw = p.n1;
    if (px >= hw) {
        return;
    }
    var ss = 0.0;
    for (var k = 0u; k < ch; k++) {
        let v = a[k * hw + px];
        ss += v * v;
    }
    let rms = sqrt(ss / f32(ch) + p.eps);
    for (var k = 0u; k < ch; k++) {
        var v = a[k * hw + px] / rms * b[k] + b[ch + k];
        if (p.n2 != 0u) {
            v += c[k * hw + px];
        }
        y[k * hw + px] = v;
    }
}

// PyTorch's pixel_unshuffle(·, 2) of `a`, plus (with a shortcut) the channel average of
// pixel_unshuffle(b): the residual downsampling. n0 = channels of a, n1 = out channels
// (4·n0), n2 = height, n3 = width of a and b, n4 = channels of b (0: no shortcut).
@compute @workgroup_size(64)
fn unshuffle(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let w = p.n3;
    let h2 = p.n2 / 2u;
    let w2 = w / 2u;
    let hw2 = h2 * w2;
    if (i >= p.n1 * hw2) {
        return;
    }
    let oc = i / hw2;
    let y2 = (i % hw2) / w2;
    let x2 = i % w2;
    let hw = p.n2 * w;
    let off = (2u * y2 + (oc % 4u) / 2u) * w + 2u * x2 + oc % 2u;
    var v = a[(oc / 4u) * hw + off];
    if (p.n4 != 0u) {
        let r = 4u * p.n4 / p.n1;
        var s = 0.0;
        for (var j = 0u; j < r; j++) {
            let cc = oc * r + j;
            s += b[(cc / 4u) * hw + (2u * y2 + (cc % 4u) / 2u) * w + 2u * x2 + cc % 2u];
        }
        v += s / f32(r);
    }
    y[i] = v;
}

// a + the mean over consecutive groups of b's channels (n0 = channels of b, n1 = channels of
// a and y, n2 = pixels): project_out's averaging shortcut.
@compute @workgroup_size(64)
fn avg_add(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let hw = p.n2;
    if (i >= p.n1 * hw) {
        return;
    }
    let oc = i / hw;
    let px = i % hw;
    let r = p.n0 / p.n1;
    var s = 0.0;
    for (var j = 0u; j < r; j++) {
        s += b[(oc * r + j) * hw + px];
    }
    y[i] = a[i] + s / f32(r);
}

// GLUMBConv's gate: y = a[:half] · silu(a[half:]). n0 = half the channels, n1 = pixels.
@compute @workgroup_size(64)
fn glu(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let n = p.n0 * p.n1;
    if (i >= n) {
        return;
    }
    y[i] = a[i] * silu(a[n + i]);
}

// LiteMLA, first half: per head, [v; 1] · relu(k)ᵀ, [d + 1, d]. n0 = heads, n1 = d
// (attention_dim), n2 = pixels. a = qkv [heads, 3d, hw]; y = [heads, d + 1, d].
@compute @workgroup_size(64)
fn mla_vk(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let d = p.n1;
    let hw = p.n2;
    if (i >= p.n0 * (d + 1u) * d) {
        return;
    }
    let head = i / ((d + 1u) * d);
    let row = (i / d) % (d + 1u);
    let col = i % d;
    let base = head * 3u * d * hw;
    let kb = base + (d + col) * hw;
    var s = 0.0;
    if (row < d) {
        let vb = base + (2u * d + row) * hw;
        for (var t = 0u; t < hw; t++) {
            s += a[vb + t] * max(a[kb + t], 0.0);
        }
    } else {
        for (var t = 0u; t < hw; t++) {
            s += max(a[kb + t], 0.0);
        }
    }
    y[i] = s;
}

// LiteMLA, second half: (vk · relu(q)) rows divided by its last row (+ 1e-15).
// n0 = heads, n1 = d, n2 = pixels. a = qkv [heads, 3d, hw], b = vk [heads, d + 1, d];
// y = [heads·d, hw].
@compute @workgroup_size(64)
fn mla_out(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let d = p.n1;
    let hw = p.n2;
    if (i >= p.n0 * d * hw) {
        return;
    }
    let head = i / (d * hw);
    let row = (i / hw) % d;
    let t = i % hw;
    let qb = head * 3u * d * hw;
    let vk = head * (d + 1u) * d;
    var num = 0.0;
    var den = 0.0;
    for (var j = 0u; j < d; j++) {
        let q = max(a[qb + j * hw + t], 0.0);
        num += b[vk + row * d + j] * q;
        den += b[vk + d * d + j] * q;
    }
    y[i] = num / (den + 1e-15);
}

// The grouped quantiser: per pixel and group, the L2-normalised latent's nearest code by the
// reference's score 2 z·e − |z|² − |e|² (first maximum), written as an f32 index.
// n0 = groups, n1 = group dim, n2 = codes per group, n3 = pixels. a = latent [C, hw],
// b = the L2-normalised codebook [G · codes, group dim]; y = [hw, G].
@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(id, nw);
    let g = p.n0;
    let gd = p.n1;
    let per = p.n2;
    let hw = p.n3;
    if (i >= hw * g) {
        return;
    }
    let px = i / g;
    let grp = i % g;
    var nz = 0.0;
    for (var k = 0u; k < gd; k++) {
        let v = a[(grp * gd + k) * hw + px];
        nz += v * v;
    }
    let norm = max(sqrt(nz), 1e-12);
    var zz = 0.0;
    for (var k = 0u; k < gd; k++) {
        let v = a[(grp * gd + k) * hw + px] / norm;
        zz += v * v;
    }
    var best = 0u;
    var best_score = -3.0e38;
    for (var e = 0u; e < per; e++) {
        let eb = (grp * per + e) * gd;
        var dot = 0.0;
        var ee = 0.0;
        for (var k = 0u; k < gd; k++) {
            let ev = b[eb + k];
            dot += a[(grp * gd + k) * hw + px] / norm * ev;
            ee += ev * ev;
        }
        let score = 2.0 * dot - zz - ee;
        if (score > best_score) {
            best_score = score;
            best = e;
        }
    }
    y[i] = f32(best);
}

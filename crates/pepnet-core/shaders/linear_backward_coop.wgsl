// The weight gradient on cooperative matrices (tensor cores): the entry point `weight_grad_coop`,
// appended to linear_backward.wgsl on devices that offer f16 × f16 → f32 matrix products, after
// the same header as linear_coop.wgsl (CM, SG, FragA, FragB, FragC). Same problem table, same
// 64 × 64 tiles of W (numbered by `first_wtile`) and the same fused dZ as `weight_grad`:
//
//   dW[n, k] = Σ_m dZ[m, n] · (A ⊙ G)[m, k]      db[n] = Σ_m dZ[m, n]
//
// Range. A gradient can be far smaller than f16's normal range (2^-14), so dZ is block-scaled:
// the workgroup first finds the largest |dZ| of its 64 columns over all rows (a workgroup max:
// order-free, so deterministic) and multiplies every dZ by the power of two that brings it into
// [2^14, 2^15). Every dZ down to 2^-28 of the tile's largest keeps f16's 11 significant bits; the
// f32 accumulators are multiplied back on the way out, exactly (powers of two). A ⊙ G is rounded
// to f16 as the forward rounds it. The bias sums the unrounded f32 dZ, each column by the same
// threads in the same row order as `weight_grad`'s: deterministic.
//
// Tiling: SUB × SUB subgroups (SUB = 64 / 2·CM), each owning 2 × 2 fragments of the 64 × 64 tile;
// rows m advance 2·CM at a time, staged through registers into two halves of workgroup memory
// as in linear_coop.wgsl (one barrier a step).

const WSUB: u32 = 64u / (2u * CM);
const W_THREADS: u32 = WSUB * WSUB * SG;
const WR: u32 = 2u * CM;                          // rows m per step
const WLD: u32 = 64u + 8u;                        // f16 per staged row (64 columns and a pad)
const W_STAGE_HALF: u32 = WR * WLD;
const W_LOADS: u32 = WR * 64u / W_THREADS;        // elements of each operand a thread stages
const W_COLUMN_THREADS: u32 = W_THREADS / 64u;    // threads sharing one column's bias sum

var<workgroup> wg_dz: array<f16, 2u * W_STAGE_HALF>;   // [m][n], dZ · 2^s
var<workgroup> wg_a: array<f16, 2u * W_STAGE_HALF>;    // [m][k], A ⊙ G
var<workgroup> wg_out: array<f32, WSUB * WSUB * CM * CM>;
var<workgroup> wg_bias: array<f32, W_THREADS>;
var<workgroup> wg_max: atomic<u32>;

// Loads rows m0 .. m0 + WR of dZ (scaled, rounded) and A ⊙ G (rounded) for this invocation;
// adds the unscaled dZ to its column's bias sum.
fn wcoop_load(
    pr: Problem,
    m0: u32,
    n0: u32,
    k0: u32,
    li: u32,
    scale: f32,
    dz: ptr<function, array<f16, W_LOADS>>,
    a: ptr<function, array<f16, W_LOADS>>,
    bias: ptr<function, f32>,
) {
    for (var j = 0u; j < W_LOADS; j++) {
        let e = li + W_THREADS * j;
        let m = m0 + e / 64u;
        let c = e % 64u; // the same column for every j: W_THREADS is a multiple of 64
        let z = load_dz(pr, m, n0 + c);
        *bias += z;
        (*dz)[j] = f16(round_half(z * scale));
        (*a)[j] = f16(round_half(load_a(pr, m, k0 + c)));
    }
}

fn wcoop_store(
    slot: u32,
    li: u32,
    dz: ptr<function, array<f16, W_LOADS>>,
    a: ptr<function, array<f16, W_LOADS>>,
) {
    for (var j = 0u; j < W_LOADS; j++) {
        let e = li + W_THREADS * j;
        let at = slot * W_STAGE_HALF + (e / 64u) * WLD + e % 64u;
        wg_dz[at] = (*dz)[j];
        wg_a[at] = (*a)[j];
    }
}

// One fragment's epilogue: this subgroup's lanes write its elements of dW, unscaled.
fn wcoop_finish(pr: Problem, out: u32, lane: u32, n: u32, k: u32, unscale: f32) {
    let w_stride = (pr.k + 3u) & ~3u;
    for (var e = lane; e < CM * CM; e += SG) {
        let nn = n + e / CM;
        let kk = k + e % CM;
        if nn < pr.n && kk < pr.k {
            wgrad[pr.w_off + nn * w_stride + kk] = wg_out[out + e] * unscale;
        }
    }
}

@compute @workgroup_size(W_THREADS, 1, 1)
fn weight_grad_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pr = find_weight_problem(wg.x);
    let local = wg.x - pr.first_wtile;
    let n_tiles = (pr.n + 63u) / 64u;
    let n0 = (local % n_tiles) * 64u;
    let k0 = (local / n_tiles) * 64u;

    // The largest |dZ| of the tile's columns, and the power of two that scales it into
    // [2^14, 2^15) (1 for an all-zero tile; exponents clamped so the scale stays finite).
    if li == 0u {
        atomicStore(&wg_max, 0u);
    }
    workgroupBarrier();
    var local_max = 0.0;
    for (var m = li / 64u; m < batch.rows; m += W_COLUMN_THREADS) {
        local_max = max(local_max, abs(load_dz(pr, m, n0 + li % 64u)));
    }
    atomicMax(&wg_max, bitcast<u32>(local_max));
    workgroupBarrier();
    let max_bits = atomicLoad(&wg_max);
    let exponent = clamp(i32((max_bits >> 23u) & 0xffu) - 127, -100, 100);
    let scale = select(exp2(f32(14 - exponent)), 1.0, max_bits == 0u);
    let unscale = 1.0 / scale;

    // Subgroup roles: a 2 × 2 block of fragments at (sn, sk) within the tile.
    let sg = li / SG;
    let sn = (sg / WSUB) * 2u * CM;
    let sk = (sg % WSUB) * 2u * CM;

    var acc00 = FragC();
    var acc01 = FragC();
    var acc10 = FragC();
    var acc11 = FragC();
    var dz_regs: array<f16, W_LOADS>;
    var a_regs: array<f16, W_LOADS>;
    var bias = 0.0;

    let steps = (batch.rows + WR - 1u) / WR;
    wcoop_load(pr, 0u, n0, k0, li, scale, &dz_regs, &a_regs, &bias);
    wcoop_store(0u, li, &dz_regs, &a_regs);
    workgroupBarrier();
    for (var s = 0u; s < steps; s++) {
        let next = s + 1u < steps;
        if next {
            wcoop_load(pr, (s + 1u) * WR, n0, k0, li, scale, &dz_regs, &a_regs, &bias);
        }
        let base = (s % 2u) * W_STAGE_HALF;
        // A = dZᵀ (n × m): element (n, m) is wg_dz[m][n], so it loads column-major;
        // B = A ⊙ G (m × k), row-major.
        {
            let a0 = coopLoad<FragA>(&wg_dz[base + sn], WLD);
            let a1 = coopLoad<FragA>(&wg_dz[base + sn + CM], WLD);
            let b0 = coopLoadT<FragB>(&wg_a[base + sk], WLD);
            let b1 = coopLoadT<FragB>(&wg_a[base + sk + CM], WLD);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        {
            let a0 = coopLoad<FragA>(&wg_dz[base + CM * WLD + sn], WLD);
            let a1 = coopLoad<FragA>(&wg_dz[base + CM * WLD + sn + CM], WLD);
            let b0 = coopLoadT<FragB>(&wg_a[base + CM * WLD + sk], WLD);
            let b1 = coopLoadT<FragB>(&wg_a[base + CM * WLD + sk + CM], WLD);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        if next {
            wcoop_store((s + 1u) % 2u, li, &dz_regs, &a_regs);
        }
        workgroupBarrier();
    }

    let lane = li % SG;
    let out = sg * CM * CM;
    let n = n0 + sn;
    let k = k0 + sk;
    coopStoreT(acc00, &wg_out[out], CM);
    workgroupBarrier();
    wcoop_finish(pr, out, lane, n, k, unscale);
    workgroupBarrier();
    coopStoreT(acc01, &wg_out[out], CM);
    workgroupBarrier();
    wcoop_finish(pr, out, lane, n, k + CM, unscale);
    workgroupBarrier();
    coopStoreT(acc10, &wg_out[out], CM);
    workgroupBarrier();
    wcoop_finish(pr, out, lane, n + CM, k, unscale);
    workgroupBarrier();
    coopStoreT(acc11, &wg_out[out], CM);
    workgroupBarrier();
    wcoop_finish(pr, out, lane, n + CM, k + CM, unscale);

    // The bias: the tiles of W's first 64 columns sum each column's partial sums in thread order.
    wg_bias[li] = bias;
    workgroupBarrier();
    if k0 == 0u && li < 64u && n0 + li < pr.n {
        var total = 0.0;
        for (var t = 0u; t < W_COLUMN_THREADS; t++) {
            total += wg_bias[li + 64u * t];
        }
        wgrad[pr.bias_off + n0 + li] = total;
    }
}

// ---- input_grad_coop ---------------------------------------------------------------------
//
// The input gradient on cooperative matrices: per input group, for a tile of BM rows × 64
// columns of A, each problem's dA_p = dZ_p · W_p (dZ block-scaled per problem and tile as above,
// W rounded to f16 as the forward reads it), then through the gate product as `input_grad` does:
// a gated problem writes its gate's gradient dA_p ⊙ A and adds dA_p ⊙ G_p to the group's sum,
// an ungated one adds dA_p. The sum lives in workgroup memory, each element owned by one
// invocation, problems added in order: deterministic. The first `grad_k` columns are written.

const IB_M: u32 = 2u * 2u * CM;                      // rows per tile (2 subgroups down)
const I_SUB_N: u32 = 64u / (2u * CM);                // subgroups across the 64 columns
const I_SUBGROUPS: u32 = 2u * I_SUB_N;
const I_THREADS: u32 = I_SUBGROUPS * SG;
const IN: u32 = 2u * CM;                             // n per step
const I_DZ_LD: u32 = IN + 8u;                        // f16 per staged dZ row
const I_DZ_HALF: u32 = IB_M * I_DZ_LD;
const I_W_HALF: u32 = IN * WLD;                      // W: IN rows of 64 (+ pad) f16
const I_DZ_LOADS: u32 = IB_M * IN / I_THREADS;
const I_W_LOADS: u32 = IN * 64u / I_THREADS;

var<workgroup> ig_dz: array<f16, 2u * I_DZ_HALF>;    // [m][n], dZ · 2^s
var<workgroup> ig_w: array<f16, 2u * I_W_HALF>;      // [n][k]
var<workgroup> ig_out: array<f32, I_SUBGROUPS * CM * CM>;
var<workgroup> ig_total: array<f32, IB_M * 64u>;    // [m][k], the group's sum
var<workgroup> ig_max: atomic<u32>;

fn icoop_load(
    pr: Problem,
    m0: u32,
    n0: u32,
    k0: u32,
    li: u32,
    scale: f32,
    dz: ptr<function, array<f16, I_DZ_LOADS>>,
    w: ptr<function, array<f16, I_W_LOADS>>,
) {
    for (var j = 0u; j < I_DZ_LOADS; j++) {
        let e = li + I_THREADS * j;
        (*dz)[j] = f16(round_half(load_dz(pr, m0 + e / IN, n0 + e % IN) * scale));
    }
    for (var j = 0u; j < I_W_LOADS; j++) {
        let e = li + I_THREADS * j;
        let n = n0 + e / 64u;
        let k = k0 + e % 64u;
        var v = 0.0;
        if n < pr.n && k < pr.k {
            v = load_w4(pr, n, k & ~3u)[k % 4u];
        }
        (*w)[j] = f16(round_half(v));
    }
}

fn icoop_store(
    slot: u32,
    li: u32,
    dz: ptr<function, array<f16, I_DZ_LOADS>>,
    w: ptr<function, array<f16, I_W_LOADS>>,
) {
    for (var j = 0u; j < I_DZ_LOADS; j++) {
        let e = li + I_THREADS * j;
        ig_dz[slot * I_DZ_HALF + (e / IN) * I_DZ_LD + e % IN] = (*dz)[j];
    }
    for (var j = 0u; j < I_W_LOADS; j++) {
        let e = li + I_THREADS * j;
        ig_w[slot * I_W_HALF + (e / 64u) * WLD + e % 64u] = (*w)[j];
    }
}

// One fragment of dA_p (rows tm.., columns tk.. of the tile) through the gate product into the
// group's sum.
fn icoop_finish(pr: Problem, out: u32, lane: u32, m0: u32, k0: u32, tm: u32, tk: u32, unscale: f32, grad_k: u32) {
    for (var e = lane; e < CM * CM; e += SG) {
        let r = tm + e / CM;
        let c = tk + e % CM;
        let v = ig_out[out + e] * unscale;
        let m = m0 + r;
        let k = k0 + c;
        var add = v;
        if (pr.flags & FLAG_GATED) != 0u {
            add = 0.0;
            if m < batch.rows && k < grad_k {
                let a = act_in(act[pr.a_off + m * pr.a_stride + k]);
                let g = act_in(act[pr.g_off + m * pr.g_stride + k]);
                grad[pr.g_off + m * pr.g_stride + k] = v * a;
                add = v * g;
            }
        }
        ig_total[r * 64u + c] += add;
    }
}

@compute @workgroup_size(I_THREADS, 1, 1)
fn input_grad_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let group = find_group(wg.x);
    let m0 = wg.y * IB_M;
    let k0 = (wg.x - group.first_tile) * 64u;
    let sg = li / SG;
    let lane = li % SG;
    let sm = (sg / I_SUB_N) * 2u * CM;
    let sk = (sg % I_SUB_N) * 2u * CM;
    let out = sg * CM * CM;

    for (var e = li; e < IB_M * 64u; e += I_THREADS) {
        ig_total[e] = 0.0;
    }
    var dz_regs: array<f16, I_DZ_LOADS>;
    var w_regs: array<f16, I_W_LOADS>;
    for (var p = group.first; p < group.first + group.count; p++) {
        let pr = problems[p];
        // This problem's scale: the largest |dZ| of the tile's rows over all its columns.
        if li == 0u {
            atomicStore(&ig_max, 0u);
        }
        workgroupBarrier();
        var local_max = 0.0;
        for (var e = li; e < IB_M * pr.n; e += I_THREADS) {
            local_max = max(local_max, abs(load_dz(pr, m0 + e / pr.n, e % pr.n)));
        }
        atomicMax(&ig_max, bitcast<u32>(local_max));
        workgroupBarrier();
        let max_bits = atomicLoad(&ig_max);
        let exponent = clamp(i32((max_bits >> 23u) & 0xffu) - 127, -100, 100);
        let scale = select(exp2(f32(14 - exponent)), 1.0, max_bits == 0u);

        var acc00 = FragC();
        var acc01 = FragC();
        var acc10 = FragC();
        var acc11 = FragC();
        let steps = (pr.n + IN - 1u) / IN;
        icoop_load(pr, m0, 0u, k0, li, scale, &dz_regs, &w_regs);
        icoop_store(0u, li, &dz_regs, &w_regs);
        workgroupBarrier();
        for (var s = 0u; s < steps; s++) {
            let next = s + 1u < steps;
            if next {
                icoop_load(pr, m0, (s + 1u) * IN, k0, li, scale, &dz_regs, &w_regs);
            }
            let dz_base = (s % 2u) * I_DZ_HALF + sm * I_DZ_LD;
            let w_base = (s % 2u) * I_W_HALF + sk;
            // dZ (m × n) and W (n × k) are both staged row-major.
            {
                let a0 = coopLoadT<FragA>(&ig_dz[dz_base], I_DZ_LD);
                let a1 = coopLoadT<FragA>(&ig_dz[dz_base + CM * I_DZ_LD], I_DZ_LD);
                let b0 = coopLoadT<FragB>(&ig_w[w_base], WLD);
                let b1 = coopLoadT<FragB>(&ig_w[w_base + CM], WLD);
                acc00 = coopMultiplyAdd(a0, b0, acc00);
                acc01 = coopMultiplyAdd(a0, b1, acc01);
                acc10 = coopMultiplyAdd(a1, b0, acc10);
                acc11 = coopMultiplyAdd(a1, b1, acc11);
            }
            {
                let a0 = coopLoadT<FragA>(&ig_dz[dz_base + CM], I_DZ_LD);
                let a1 = coopLoadT<FragA>(&ig_dz[dz_base + CM * I_DZ_LD + CM], I_DZ_LD);
                let b0 = coopLoadT<FragB>(&ig_w[w_base + CM * WLD], WLD);
                let b1 = coopLoadT<FragB>(&ig_w[w_base + CM * WLD + CM], WLD);
                acc00 = coopMultiplyAdd(a0, b0, acc00);
                acc01 = coopMultiplyAdd(a0, b1, acc01);
                acc10 = coopMultiplyAdd(a1, b0, acc10);
                acc11 = coopMultiplyAdd(a1, b1, acc11);
            }
            if next {
                icoop_store((s + 1u) % 2u, li, &dz_regs, &w_regs);
            }
            workgroupBarrier();
        }
        let unscale = 1.0 / scale;
        coopStoreT(acc00, &ig_out[out], CM);
        workgroupBarrier();
        icoop_finish(pr, out, lane, m0, k0, sm, sk, unscale, group.grad_k);
        workgroupBarrier();
        coopStoreT(acc01, &ig_out[out], CM);
        workgroupBarrier();
        icoop_finish(pr, out, lane, m0, k0, sm, sk + CM, unscale, group.grad_k);
        workgroupBarrier();
        coopStoreT(acc10, &ig_out[out], CM);
        workgroupBarrier();
        icoop_finish(pr, out, lane, m0, k0, sm + CM, sk, unscale, group.grad_k);
        workgroupBarrier();
        coopStoreT(acc11, &ig_out[out], CM);
        workgroupBarrier();
        icoop_finish(pr, out, lane, m0, k0, sm + CM, sk + CM, unscale, group.grad_k);
        workgroupBarrier();
    }
    let first = problems[group.first];
    for (var e = li; e < IB_M * 64u; e += I_THREADS) {
        let m = m0 + e / 64u;
        let k = k0 + e % 64u;
        if m < batch.rows && k < group.grad_k {
            grad[first.a_off + m * first.a_stride + k] = ig_total[e];
        }
    }
}

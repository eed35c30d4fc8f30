// The grouped, gated, fused linear layer on cooperative matrices (tensor cores): the entry point
// `main_coop`, appended to linear.wgsl on devices that offer f16 × f16 → f32 matrix products.
// Same problem table, same bindings, same 64-column tiles and the same fusions as `main`:
//
//   Y[m, n] = act( Σ_k f16(A[m, k] · G[m, k]) · f16(W[n, k]) + bias[n] ) · M[m, n]
//
// The matrix shape is a parameter of this one source: the compiled module starts with a short
// header (written by src/gpu/linear.rs) that enables f16 and cooperative matrices and defines
//   CM     the fragment size (8 on Mesa's lavapipe, 16 on NVIDIA's tensor cores),
//   SG     the subgroup size (8 on lavapipe, 32 on NVIDIA), fixed on the devices this runs on,
//   FragA, FragB, FragC   the f16 A and B fragments and the f32 accumulator, CM × CM.
//
// Tiling. A workgroup computes a BM × 64 tile of Y with SUB_M × SUB_N subgroups; each subgroup
// owns a 2 × 2 block of fragments (2·CM × 2·CM outputs, four accumulators held in registers for
// the whole K loop), so every A fragment it loads feeds two products and every B fragment two.
// K advances BK = 2·CM at a time. With CM = 16, SG = 32 (NVIDIA): 64 × 64 tiles, 4 warps of
// 32 × 32 each, BK = 32. With CM = 8, SG = 8 (lavapipe): 32 × 64 tiles, 8 subgroups of 16 × 16.
//
// Staging is double-buffered through registers: the global loads of step s + 1 (A ⊙ G rounded to
// f16, and W as f16) are issued before the products of step s and stored to the other half of
// workgroup memory after them, so load latency hides behind the matrix units and each step
// needs one barrier. Ordinary code does what fragments cannot: the gate product and f16
// rounding on the way in, and on the way out (one fragment at a time through workgroup memory)
// bias, activation, the EPNet multiplier and the kept copy, by the forward's own `store`.
//
// Workgroup memory: two stages of A (BM × LDS f16) and W (64 × LDS f16), LDS = BK + 8 (rows
// padded by 16 bytes against bank conflicts and for aligned fragment loads), plus one CM × CM
// f32 fragment per subgroup for the epilogue: 24 KiB for CM = 16, 10 KiB for CM = 8. The host
// builds this variant only where the device allows that much.

const SUB_N: u32 = 64u / (2u * CM);           // subgroups across the 64 columns
const SUB_M: u32 = 2u;                        // subgroups down the rows
const SUBGROUPS: u32 = SUB_M * SUB_N;
const COOP_THREADS: u32 = SUBGROUPS * SG;
const BM: u32 = SUB_M * 2u * CM;              // rows per workgroup tile
const BK: u32 = 2u * CM;                      // reduction depth per step
const LDS: u32 = BK + 8u;                     // f16 per staged row
const A_STAGE: u32 = BM * LDS;
const W_STAGE: u32 = 64u * LDS;
const A_LOADS: u32 = BM * BK / COOP_THREADS;  // A elements each thread stages per step
const W_LOADS: u32 = 64u * BK / 4u / COOP_THREADS; // groups of 4 W elements each thread stages

var<workgroup> coop_a: array<f16, 2u * A_STAGE>;
var<workgroup> coop_w: array<f16, 2u * W_STAGE>;
var<workgroup> coop_out: array<f32, SUBGROUPS * CM * CM>;

// Writes one step's staged registers into stage `slot`.
fn coop_stage_store(
    slot: u32,
    li: u32,
    a: ptr<function, array<f16, A_LOADS>>,
    w: ptr<function, array<vec2<u32>, W_LOADS>>,
) {
    for (var j = 0u; j < A_LOADS; j++) {
        let e = li + COOP_THREADS * j;
        coop_a[slot * A_STAGE + (e / BK) * LDS + e % BK] = (*a)[j];
    }
    for (var j = 0u; j < W_LOADS; j++) {
        let e = li + COOP_THREADS * j;
        let base = slot * W_STAGE + (e / (BK / 4u)) * LDS + (e % (BK / 4u)) * 4u;
        // Exact: the values are f16 already.
        let lo = vec2<f16>(unpack2x16float((*w)[j].x));
        let hi = vec2<f16>(unpack2x16float((*w)[j].y));
        coop_w[base] = lo.x;
        coop_w[base + 1u] = lo.y;
        coop_w[base + 2u] = hi.x;
        coop_w[base + 3u] = hi.y;
    }
}

// Loads step `k0`'s A ⊙ G (rounded to f16) and W (f16) for this invocation into registers.
fn coop_stage_load(
    pr: Problem,
    m0: u32,
    n0: u32,
    k0: u32,
    li: u32,
    a: ptr<function, array<f16, A_LOADS>>,
    w: ptr<function, array<vec2<u32>, W_LOADS>>,
) {
    for (var j = 0u; j < A_LOADS; j++) {
        let e = li + COOP_THREADS * j;
        (*a)[j] = f16(round_half(load_a(pr, m0 + e / BK, k0 + e % BK)));
    }
    for (var j = 0u; j < W_LOADS; j++) {
        let e = li + COOP_THREADS * j;
        (*w)[j] = load_w_half(pr, n0 + e / (BK / 4u), k0 + (e % (BK / 4u)) * 4u);
    }
}

// The epilogue of one fragment that this subgroup stored at `coop_out[out]`: its lanes pass
// each element through the forward's `store` (bias, activation, multiplier, kept copy).
fn coop_finish(pr: Problem, out: u32, lane: u32, m: u32, n: u32) {
    for (var e = lane; e < CM * CM; e += SG) {
        store(pr, m + e / CM, n + e % CM, coop_out[out + e]);
    }
}

// Cooperative-matrix operations must sit in control flow that is uniform across the
// workgroup as naga proves it, which excludes any `if` or `switch` on a variable: the step
// loop's first iteration is peeled, the two products of a step and the four fragments of the
// epilogue are written out.
@compute @workgroup_size(COOP_THREADS, 1, 1)
fn main_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pr = find_problem(wg.x);
    let m0 = wg.y * BM;
    let n0 = (wg.x - pr.first_tile) * 64u;
    // Subgroups are consecutive runs of SG invocations (a one-dimensional workgroup).
    let sg = li / SG;
    let sm = (sg / SUB_N) * 2u * CM; // this subgroup's first row and column within the tile
    let sn = (sg % SUB_N) * 2u * CM;

    var acc00 = FragC();
    var acc01 = FragC();
    var acc10 = FragC();
    var acc11 = FragC();
    var a_regs: array<f16, A_LOADS>;
    var w_regs: array<vec2<u32>, W_LOADS>;

    let steps = (pr.k + BK - 1u) / BK;
    coop_stage_load(pr, m0, n0, 0u, li, &a_regs, &w_regs);
    coop_stage_store(0u, li, &a_regs, &w_regs);
    workgroupBarrier();
    for (var s = 0u; s < steps; s++) {
        let next = s + 1u < steps;
        // Global loads of the next step, in flight while the matrix units work.
        if next {
            coop_stage_load(pr, m0, n0, (s + 1u) * BK, li, &a_regs, &w_regs);
        }
        let a_base = (s % 2u) * A_STAGE + sm * LDS;
        let w_base = (s % 2u) * W_STAGE + sn * LDS;
        // B = Wᵀ: column n of B is row n of the staged W, so it loads column-major.
        {
            let a0 = coopLoadT<FragA>(&coop_a[a_base], LDS);
            let a1 = coopLoadT<FragA>(&coop_a[a_base + CM * LDS], LDS);
            let b0 = coopLoad<FragB>(&coop_w[w_base], LDS);
            let b1 = coopLoad<FragB>(&coop_w[w_base + CM * LDS], LDS);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        {
            let a0 = coopLoadT<FragA>(&coop_a[a_base + CM], LDS);
            let a1 = coopLoadT<FragA>(&coop_a[a_base + CM * LDS + CM], LDS);
            let b0 = coopLoad<FragB>(&coop_w[w_base + CM], LDS);
            let b1 = coopLoad<FragB>(&coop_w[w_base + CM * LDS + CM], LDS);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        // The next step goes to the stage this one did not read: every invocation finished
        // reading it before the barrier that ended the previous iteration.
        if next {
            coop_stage_store((s + 1u) % 2u, li, &a_regs, &w_regs);
        }
        workgroupBarrier();
    }

    // Epilogue, one fragment at a time through this subgroup's CM × CM of workgroup memory.
    let lane = li % SG;
    let out = sg * CM * CM;
    let m = m0 + sm;
    let n = n0 + sn;
    coopStoreT(acc00, &coop_out[out], CM);
    workgroupBarrier();
    coop_finish(pr, out, lane, m, n);
    workgroupBarrier();
    coopStoreT(acc01, &coop_out[out], CM);
    workgroupBarrier();
    coop_finish(pr, out, lane, m, n + CM);
    workgroupBarrier();
    coopStoreT(acc10, &coop_out[out], CM);
    workgroupBarrier();
    coop_finish(pr, out, lane, m + CM, n);
    workgroupBarrier();
    coopStoreT(acc11, &coop_out[out], CM);
    workgroupBarrier();
    coop_finish(pr, out, lane, m + CM, n + CM);
}

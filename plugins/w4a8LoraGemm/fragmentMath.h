// Index and fragment math shared by the kernels and the host test (test/fragmentMathTest.cpp).
//
// Everything here is constexpr/inline and compiles with a plain C++17 host compiler, so the mapping of
// (warp, lane, register, byte) to matrix coordinates can be replayed and checked on a machine without a GPU.
// The kernels call these helpers for every shared-memory address and every fragment coordinate they use.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DITAS_HD __host__ __device__ __forceinline__
#else
#define DITAS_HD inline
#endif

namespace ditas
{
namespace frag
{

// ---------------------------------------------------------------------------------------------------------------
// Lane decomposition used by every mma.sync fragment: lane = 4 * group + quad
// ---------------------------------------------------------------------------------------------------------------
DITAS_HD constexpr int laneGroup(int lane) { return lane >> 2; }
DITAS_HD constexpr int laneQuad(int lane) { return lane & 3; }

// PRMT (byte permute) with the default mode: result byte i = byte sel_i of the 8-byte value {b, a} (a = bytes 0..3).
DITAS_HD uint32_t bytePermHost(uint32_t a, uint32_t b, uint32_t sel)
{
    uint64_t const v = (uint64_t(b) << 32) | a;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i)
    {
        uint32_t const s = (sel >> (4 * i)) & 7u;
        r |= uint32_t((v >> (8 * s)) & 0xFFu) << (8 * i);
    }
    return r;
}

DITAS_HD uint32_t bytePerm(uint32_t a, uint32_t b, uint32_t sel)
{
#if defined(__CUDA_ARCH__)
    return __byte_perm(a, b, sel);
#else
    return bytePermHost(a, b, sel);
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// Main loop of the INT8 GEMM (mma.sync.m16n8k32.row.col.s32.s8.s8.s32), k-tile of 64 codes
//
// Each lane owns a 16-code k-span of the tile: k = 16 * quad + [0, 16), held as four 32-bit words of 4 int8 codes in
// natural k order (word j = codes 16q + 4j .. 16q + 4j + 3). mma s (0, 1) takes span words 2s (operand half 0:
// a0/a1, b0) and 2s + 1 (half 1: a2/a3, b1). The PTX fragment of m16n8k32 puts k-slots 4q..4q+3 (half 0) and
// 16+4q..16+4q+3 (half 1) on lane quad q for A and B alike, so A and B see the same permutation of k inside the
// tile and the dot product is unchanged; the two mmas cover each k of the tile exactly once.
//
// Shared memory per stage:
//   A  x_q tile, "fragment order": for each 16-row block and each mma s, lane l's four words {a0, a1, a2, a3} are
//      16 consecutive bytes at block * 1024 + s * 512 + l * 16, so one LDS.128 gives the MMA operand registers in
//      order (no register moves) and a warp's load is 512 contiguous bytes (conflict free). Written by 4-byte
//      cp.async copies, one global word (row r, word w of the tile row) at aWordDst(r, w).
//   B  weights, linear rows: [BN][64] int8 (W8, 64-byte rows), [BN][32] packed INT4 (W4, 32-byte rows, two codes per
//      byte, low nibble = even k); lane (g, q) reads its span with one 16-byte (W8) or 8-byte (W4) load.
// ---------------------------------------------------------------------------------------------------------------
constexpr int kBK = 64;
constexpr int kAWordsPerRow = kBK / 4;

template <int kBits>
DITAS_HD constexpr int bRowBytes()
{
    return kBK * kBits / 8;
}

// Byte offset of the A fragment {a0, a1, a2, a3} of `lane` for mma s of the 16-row block `block` of the tile.
DITAS_HD constexpr int aFragOffset(int block, int s, int lane) { return block * 1024 + s * 512 + lane * 16; }

// Byte offset where the 4-byte word w (0..15, codes 4w..4w+3) of tile row r is stored.
DITAS_HD constexpr int aWordDst(int r, int w)
{
    return aFragOffset(r >> 4, (w >> 1) & 1, 4 * (r & 7) + (w >> 2)) + 4 * (((r >> 3) & 1) + 2 * (w & 1));
}

// A copy plan: thread tid copies word w = tid % 16 of rows r0 + it * step (r0 = tid / 16, step = threads / 16, one
// warp instruction = 2 rows x 64 contiguous bytes). Its destinations are aWordDst(r0, w) + aCopyDelta(step, it).
DITAS_HD constexpr int aCopyDelta(int step, int it)
{
    return step == 16 ? 1024 * it : 1024 * (it >> 1) + 4 * (it & 1); // step 16: next block; step 8: g + 8, next block
}

// Byte offset in the B stage tile of the span of `lane` for the 8-column block starting at colBase
// (16 bytes for W8, 8 bytes for W4).
template <int kBits>
DITAS_HD constexpr int bSpanOffset(int colBase, int lane)
{
    return (colBase + laneGroup(lane)) * bRowBytes<kBits>() + laneQuad(lane) * 2 * kBits;
}

// Tile-local k of byte i of span register j of `lane`.
DITAS_HD constexpr int spanK(int lane, int j, int i) { return 16 * laneQuad(lane) + 4 * j + i; }

// Span register used by mma s (0/1) for operand half h (0: a0/a1/b0, 1: a2/a3/b1).
DITAS_HD constexpr int spanReg(int s, int h) { return 2 * s + h; }

// Eight packed INT4 codes (one word, low nibble first) -> two registers of four int8 lanes in natural k order,
// each lane holding 16 * code (exact in int8: 16 * [-8, 7] = [-128, 112]). Accumulators are therefore 16x the
// true sums; they are divisible by 16 and `>> 4` (or a weight scale pre-multiplied by 1/16) recovers them exactly.
DITAS_HD void unpackInt4x8(uint32_t w, uint32_t& r0, uint32_t& r1)
{
    uint32_t const lo = (w << 4) & 0xF0F0F0F0u; // 16 * codes 0, 2, 4, 6
    uint32_t const hi = w & 0xF0F0F0F0u;        // 16 * codes 1, 3, 5, 7
    r0 = bytePerm(lo, hi, 0x5140u);              // codes 0, 1, 2, 3
    r1 = bytePerm(lo, hi, 0x7362u);              // codes 4, 5, 6, 7
}

// Accumulator element i (0..3) of an m16n8 fragment (s32 or f32) -> row / column inside the 16 x 8 tile.
DITAS_HD constexpr int accRow(int lane, int i) { return laneGroup(lane) + 8 * (i >> 1); }
DITAS_HD constexpr int accCol(int lane, int i) { return 2 * laneQuad(lane) + (i & 1); }

// ---------------------------------------------------------------------------------------------------------------
// LoRA-up epilogue: y += lora_act[BM, r] . lora_up[r, BN] with mma.sync.m16n8k16.row.col.f32.f16.f16.f32
//
//   lora_act tile  fp32 [BM][r + 8]     (padding makes the float2 fragment reads conflict free)
//   lora_up tile   fp16 [r][BN + 8]     (padding makes the ldmatrix row reads conflict free)
// ---------------------------------------------------------------------------------------------------------------
DITAS_HD constexpr int loraActStride(int rank) { return rank + 8; } // floats
template <int BN>
DITAS_HD constexpr int loraUpStride()
{
    return BN + 8; // halves
}

// A fragment of m16n8k16 (f16): register j holds 2 halves at row accRow-like (g + 8 * (j & 1)), k = 2q + 8 * (j >> 1) + v.
DITAS_HD constexpr int f16ARow(int lane, int j) { return laneGroup(lane) + 8 * (j & 1); }
DITAS_HD constexpr int f16ACol(int lane, int j) { return 2 * laneQuad(lane) + 8 * (j >> 1); }

// ldmatrix.x4.trans over the lora_up tile: lane provides the address of row (lane & 7) of matrix (lane >> 3);
// matrix m covers k rows kBase + 8 * (m & 1) + [0, 8) and columns colBase + 8 * (m >> 1) + [0, 8). The four result
// registers are b0, b1 of n-block colBase and b0, b1 of n-block colBase + 8.
DITAS_HD constexpr int upLdsmRow(int kBase, int lane) { return kBase + 8 * ((lane >> 3) & 1) + (lane & 7); }
DITAS_HD constexpr int upLdsmCol(int colBase, int lane) { return colBase + 8 * (lane >> 4); }

// ---------------------------------------------------------------------------------------------------------------
// Activation quantize kernel with fused LoRA-down (x[16 rows, K] . lora_down[K, r], m16n8k16 f16 MMAs)
//
// A warp walks 64-column chunks. Lane (g, q) loads 8 consecutive elements of rows g and g + 8 for each 32-column
// sub-chunk sc: columns 32 sc + 8 q + e, e = 0..7 (one 16-byte load for fp16). mma s (0, 1) of a sub-chunk takes
// elements 4s, 4s+1 (half 0: a0/a1) and 4s+2, 4s+3 (half 1: a2/a3), so slot (q, h, v) of mma s is column
// 32 sc + 8 q + 4 s + 2 h + v. lora_down rows of the chunk are stored in shared memory in the permuted order
// downSmemRow() so that the eight k-rows one ldmatrix.trans matrix needs are consecutive (conflict free), and the
// B fragment of mma s gets exactly the same columns.
// ---------------------------------------------------------------------------------------------------------------
constexpr int kQuantRows = 16;  // rows per CTA
constexpr int kQuantChunk = 64; // columns per warp step

DITAS_HD constexpr int quantElemCol(int lane, int sc, int e) { return 32 * sc + 8 * laneQuad(lane) + e; }

// Chunk-local k (0..63) -> shared-memory row of the lora_down chunk.
DITAS_HD constexpr int downSmemRow(int kLocal)
{
    return (kLocal >> 5) * 32 + (((kLocal >> 2) & 1) * 2 + ((kLocal >> 1) & 1)) * 8 + 2 * ((kLocal >> 3) & 3) + (kLocal & 1);
}

// ldmatrix.x4.trans for mma (sc, s) and n-blocks colBase, colBase + 8: the shared-memory row lane provides.
DITAS_HD constexpr int downLdsmRow(int sc, int s, int lane) { return sc * 32 + (s * 2 + ((lane >> 3) & 1)) * 8 + (lane & 7); }
DITAS_HD constexpr int downLdsmCol(int colBase, int lane) { return colBase + 8 * (lane >> 4); }

// lora_down shared row stride in halves: r + 8 keeps eight consecutive rows on distinct 16-byte bank groups.
DITAS_HD constexpr int downStride(int rank) { return rank + 8; }

} // namespace frag
} // namespace ditas

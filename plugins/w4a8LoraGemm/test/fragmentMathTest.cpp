// Host replay of the kernels' fragment math (fragmentMath.h) against an independent model of the PTX instructions.
//
// Build and run (no CUDA needed):  g++ -std=c++17 -O1 -I.. fragmentMathTest.cpp -o fragmentMathTest && ./fragmentMathTest
// With --dump-unpack it prints, for every byte value b, the eight int8 lanes unpackInt4x8 makes of the word
// b * 0x01010101 (tests/test_kernels.py compares them with ditas_trt.quant.format.unpack_int4).
//
// What is modelled independently of fragmentMath.h (from the PTX ISA fragment tables, as encoded by CUTLASS's cute
// MMA_Traits for SM80_16x8x32_S32S8S8S32_TN and SM80_16x8x16_F32F16F16F32_TN, and the ldmatrix description):
//   mma m16n8k32 s8:  A reg j byte i of lane (g, q) = A[g + 8 (j & 1)][4 q + i + 16 (j >> 1)]
//                     B reg j byte i               = B[k = 4 q + i + 16 j][n = g]
//                     C elem i                     = C[g + 8 (i >> 1)][2 q + (i & 1)]
//   mma m16n8k16 f16: A reg j half v = A[g + 8 (j & 1)][2 q + v + 8 (j >> 1)];  B reg j half v = B[2 q + v + 8 j][g]
//   ldmatrix .x4 .trans: lane l gives row (l & 7) of matrix (l >> 3); lane (g, q) receives in reg m the elements
//                     (row 2q, col g) and (row 2q + 1, col g) of matrix m.
// What is NOT covered: the PTX wrappers themselves, cp.async / barrier ordering, global-memory indexing.
#include "../fragmentMath.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

using namespace ditas::frag;

namespace
{

int gFailures = 0;

#define CHECK(cond, ...)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            if (gFailures < 20)                                                                                        \
            {                                                                                                          \
                std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                       \
                std::printf(__VA_ARGS__);                                                                              \
                std::printf("\n");                                                                                     \
            }                                                                                                          \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

int8_t byteOf(uint32_t w, int i)
{
    return int8_t((w >> (8 * i)) & 0xFF);
}

int nibbleCode(uint8_t byte, int high)
{
    int const v = high ? (byte >> 4) : (byte & 0xF);
    return v >= 8 ? v - 16 : v;
}

// ---------------------------------------------------------------------------------------------------------------
// Bank-conflict model: a shared-memory instruction is served in phases of (32 * 4 / accessBytes) lanes... more
// precisely 128 bytes per phase; inside a phase, lanes touching different 4-byte words of the same bank conflict.
// ---------------------------------------------------------------------------------------------------------------
bool conflictFree(std::vector<int> const& byteAddr, int accessBytes)
{
    int const lanesPerPhase = 128 / accessBytes;
    for (int p0 = 0; p0 < int(byteAddr.size()); p0 += lanesPerPhase)
    {
        std::map<int, std::set<int>> wordsPerBank;
        for (int l = p0; l < p0 + lanesPerPhase && l < int(byteAddr.size()); ++l)
        {
            for (int b = 0; b < accessBytes; b += 4)
            {
                int const word = (byteAddr[l] + b) / 4;
                wordsPerBank[word % 32].insert(word);
            }
        }
        for (auto const& kv : wordsPerBank)
        {
            if (kv.second.size() > 1)
            {
                return false;
            }
        }
    }
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// 1. INT4 unpack
// ---------------------------------------------------------------------------------------------------------------
void testUnpack()
{
    std::mt19937 rng(1);
    for (int trial = 0; trial < 20000; ++trial)
    {
        uint32_t const w = trial < 256 ? uint32_t(trial) * 0x01010101u : rng();
        uint32_t r0 = 0, r1 = 0;
        unpackInt4x8(w, r0, r1);
        for (int k = 0; k < 8; ++k)
        {
            uint8_t const byte = uint8_t((w >> (8 * (k / 2))) & 0xFF);
            int const want = 16 * nibbleCode(byte, k & 1);
            int const got = byteOf(k < 4 ? r0 : r1, k & 3);
            CHECK(got == want, "unpack w=%08x k=%d got %d want %d", w, k, got, want);
        }
    }
    // the host emulation of PRMT itself on a few hand-checked selectors
    CHECK(bytePermHost(0x33221100u, 0x77665544u, 0x5140u) == 0x55114400u, "prmt 0x5140");
    CHECK(bytePermHost(0x33221100u, 0x77665544u, 0x7362u) == 0x77336622u, "prmt 0x7362");
    CHECK(bytePermHost(0x33221100u, 0x77665544u, 0x3210u) == 0x33221100u, "prmt identity");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Main-loop fragments: one k-tile of a CTA tile through the span loads, the unpack and the mma model
// ---------------------------------------------------------------------------------------------------------------
template <int kBits>
void testMainLoop(int BM, int BN, int warpsM, int warpsN, unsigned seed)
{
    std::mt19937 rng(seed);
    int const WM = BM / warpsM, WN = BN / warpsN, MI = WM / 16, NI = WN / 8;
    std::vector<int8_t> A(BM * kBK), W(BN * kBK);
    for (auto& v : A)
        v = int8_t(int(rng() % 256) - 128);
    for (auto& v : W)
        v = kBits == 4 ? int8_t(int(rng() % 16) - 8) : int8_t(int(rng() % 256) - 128);

    // Shared stage exactly as the cp.async loader writes it: A in fragment order (4-byte words), B linear rows.
    std::vector<uint8_t> aTile(BM * kBK), bTile(BN * bRowBytes<kBits>());
    {
        std::vector<int> hit(BM * kBK / 4, 0);
        for (int r = 0; r < BM; ++r)
            for (int w = 0; w < kAWordsPerRow; ++w)
            {
                int const dst = aWordDst(r, w);
                CHECK(dst % 4 == 0 && dst >= 0 && dst < BM * kBK, "aWordDst(%d, %d) = %d out of the tile", r, w, dst);
                ++hit[dst / 4];
                std::memcpy(aTile.data() + dst, A.data() + r * kBK + 4 * w, 4);
            }
        for (int i = 0; i < BM * kBK / 4; ++i)
            CHECK(hit[i] == 1, "A word slot %d written %d times", i, hit[i]);
        // the copy plan of CopyPlan::init / issue: thread tid, iteration it
        int const threads = warpsM * warpsN * 32, step = threads / kAWordsPerRow;
        for (int tid = 0; tid < threads; ++tid)
            for (int it = 0; it < BM / step; ++it)
            {
                int const row = tid / kAWordsPerRow + it * step, w = tid % kAWordsPerRow;
                CHECK(aWordDst(tid / kAWordsPerRow, w) + aCopyDelta(step, it) == aWordDst(row, w),
                    "A copy plan tid %d it %d", tid, it);
            }
    }
    for (int n = 0; n < BN; ++n)
    {
        for (int k = 0; k < kBK; ++k)
        {
            if (kBits == 8)
            {
                bTile[n * kBK + k] = uint8_t(W[n * kBK + k]);
            }
            else
            {
                uint8_t& byte = bTile[n * bRowBytes<4>() + k / 2];
                uint8_t const nib = uint8_t(W[n * kBK + k]) & 0xF;
                byte = (k & 1) ? uint8_t((byte & 0x0F) | (nib << 4)) : uint8_t((byte & 0xF0) | nib);
            }
        }
    }

    // Span -> k bijection: over the two mmas (s) and both operand halves (h), the bytes of lane quad q are the
    // codes 16q .. 16q + 15, each once; over the four quads, the whole k-tile.
    {
        std::vector<int> seen(kBK, 0);
        for (int q = 0; q < 4; ++q)
            for (int s = 0; s < 2; ++s)
                for (int h = 0; h < 2; ++h)
                    for (int i = 0; i < 4; ++i)
                    {
                        int const k = spanK(q, spanReg(s, h), i);
                        CHECK(k / 16 == q, "span of quad %d holds k %d", q, k);
                        ++seen[k];
                    }
        for (int k = 0; k < kBK; ++k)
            CHECK(seen[k] == 1, "span coverage k %d count %d", k, seen[k]);
    }

    for (int warp = 0; warp < warpsM * warpsN; ++warp)
    {
        int const warpM = warp / warpsN, warpN = warp % warpsN;
        // per lane registers
        std::vector<std::vector<std::vector<uint32_t>>> a(32), b(32); // a[lane][mi*2+s][reg], b[lane][ni][j]
        std::vector<int> ldsA, ldsB;
        for (int lane = 0; lane < 32; ++lane)
        {
            a[lane].assign(MI * 2, std::vector<uint32_t>(4));
            b[lane].assign(NI, std::vector<uint32_t>(4));
            for (int mi = 0; mi < MI; ++mi)
                for (int s = 0; s < 2; ++s)
                {
                    int const off = aFragOffset(warpM * MI + mi, s, lane);
                    std::memcpy(a[lane][mi * 2 + s].data(), aTile.data() + off, 16);
                }
            for (int ni = 0; ni < NI; ++ni)
            {
                int const off = bSpanOffset<kBits>(warpN * WN + ni * 8, lane);
                if (kBits == 8)
                {
                    std::memcpy(b[lane][ni].data(), bTile.data() + off, 16);
                }
                else
                {
                    uint32_t w[2];
                    std::memcpy(w, bTile.data() + off, 8);
                    unpackInt4x8(w[0], b[lane][ni][0], b[lane][ni][1]);
                    unpackInt4x8(w[1], b[lane][ni][2], b[lane][ni][3]);
                }
            }
        }
        // bank conflicts of the fragment loads (lane addresses of one instruction)
        for (int mi = 0; mi < MI; ++mi)
            for (int s = 0; s < 2; ++s)
            {
                std::vector<int> addr(32);
                for (int lane = 0; lane < 32; ++lane)
                    addr[lane] = aFragOffset(warpM * MI + mi, s, lane);
                CHECK(conflictFree(addr, 16), "A LDS.128 bank conflict mi %d s %d", mi, s);
            }
        for (int ni = 0; ni < NI; ++ni)
        {
            std::vector<int> addr(32);
            for (int lane = 0; lane < 32; ++lane)
                addr[lane] = bSpanOffset<kBits>(warpN * WN + ni * 8, lane);
            CHECK(conflictFree(addr, kBits == 8 ? 16 : 8), "B LDS bank conflict ni %d", ni);
        }

        // mma model
        for (int mi = 0; mi < MI; ++mi)
            for (int ni = 0; ni < NI; ++ni)
            {
                int32_t C[16][8] = {};
                for (int s = 0; s < 2; ++s)
                {
                    int8_t Am[16][32], Bm[32][8];
                    for (int lane = 0; lane < 32; ++lane)
                    {
                        int const g = lane >> 2, q = lane & 3;
                        uint32_t const* af = a[lane][mi * 2 + s].data(); // one LDS.128 = {a0, a1, a2, a3}
                        uint32_t const bf[2] = {b[lane][ni][spanReg(s, 0)], b[lane][ni][spanReg(s, 1)]};
                        for (int j = 0; j < 4; ++j)
                            for (int i = 0; i < 4; ++i)
                                Am[g + 8 * (j & 1)][4 * q + i + 16 * (j >> 1)] = byteOf(af[j], i);
                        for (int j = 0; j < 2; ++j)
                            for (int i = 0; i < 4; ++i)
                                Bm[4 * q + i + 16 * j][g] = byteOf(bf[j], i);
                    }
                    for (int r = 0; r < 16; ++r)
                        for (int c = 0; c < 8; ++c)
                            for (int k = 0; k < 32; ++k)
                                C[r][c] += int32_t(Am[r][k]) * int32_t(Bm[k][c]);
                }
                // per-lane accumulators through accRow / accCol vs the true product
                for (int lane = 0; lane < 32; ++lane)
                {
                    int const g = lane >> 2, q = lane & 3;
                    for (int i = 0; i < 4; ++i)
                    {
                        int const ptxRow = g + 8 * (i >> 1), ptxCol = 2 * q + (i & 1);
                        CHECK(accRow(lane, i) == ptxRow && accCol(lane, i) == ptxCol, "acc mapping lane %d i %d", lane, i);
                        int const m = warpM * WM + mi * 16 + accRow(lane, i);
                        int const n = warpN * WN + ni * 8 + accCol(lane, i);
                        int64_t want = 0;
                        for (int k = 0; k < kBK; ++k)
                            want += int64_t(A[m * kBK + k]) * W[n * kBK + k];
                        int32_t const got = C[ptxRow][ptxCol];
                        int32_t const scaled = kBits == 4 ? (got >> 4) : got;
                        CHECK(scaled == want && (kBits == 8 || got % 16 == 0), "W%d BM%d warp %d mi %d ni %d m %d n %d got %d want %lld",
                            kBits, BM, warp, mi, ni, m, n, int(scaled), (long long) want);
                    }
                }
            }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. LoRA-up epilogue: float2 reads of lora_act + ldmatrix.x4.trans of lora_up + m16n8k16 model
// ---------------------------------------------------------------------------------------------------------------
template <int BN>
void testLoraUp(int BM, int warpsM, int warpsN, int rank, unsigned seed)
{
    std::mt19937 rng(seed);
    int const WM = BM / warpsM, WN = BN / warpsN, MI = WM / 16, NI = WN / 8;
    int const laStride = loraActStride(rank), upStride = loraUpStride<BN>();
    // small integers: exact in fp16 and fp32, so the model is exact
    std::vector<float> la(BM * laStride, 1e9f), up(rank * upStride, 1e9f);
    std::vector<float> act(BM * rank), upv(rank * BN);
    for (int m = 0; m < BM; ++m)
        for (int r = 0; r < rank; ++r)
            la[m * laStride + r] = act[m * rank + r] = float(int(rng() % 17) - 8);
    for (int r = 0; r < rank; ++r)
        for (int n = 0; n < BN; ++n)
            up[r * upStride + n] = upv[r * BN + n] = float(int(rng() % 17) - 8);

    for (int warp = 0; warp < warpsM * warpsN; ++warp)
    {
        int const warpM = warp / warpsN, warpN = warp % warpsN;
        for (int mi = 0; mi < MI; ++mi)
        {
            std::vector<std::vector<float>> C(NI, std::vector<float>(16 * 8, 0.f));
            for (int kk = 0; kk < rank; kk += 16)
            {
                int const tileRow = warpM * WM + mi * 16;
                float Am[16][16];
                std::vector<int> addr(32);
                for (int j = 0; j < 4; ++j)
                {
                    for (int lane = 0; lane < 32; ++lane)
                    {
                        int const g = lane >> 2, q = lane & 3;
                        int const idx = (tileRow + f16ARow(lane, j)) * laStride + kk + f16ACol(lane, j);
                        addr[lane] = idx * 4;
                        for (int v = 0; v < 2; ++v)
                            Am[g + 8 * (j & 1)][2 * q + v + 8 * (j >> 1)] = la[idx + v];
                    }
                    CHECK(conflictFree(addr, 8), "lora_act float2 bank conflict rank %d j %d", rank, j);
                }
                for (int np = 0; np < NI / 2; ++np)
                {
                    // ldmatrix.x4.trans: row addresses per lane
                    int rowAddr[32];
                    for (int lane = 0; lane < 32; ++lane)
                        rowAddr[lane] = upLdsmRow(kk, lane) * upStride + upLdsmCol(warpN * WN + np * 16, lane);
                    for (int m = 0; m < 4; ++m)
                    {
                        std::vector<int> a8;
                        for (int r = 0; r < 8; ++r)
                            a8.push_back(rowAddr[8 * m + r] * 2);
                        // one matrix = 8 rows of 16 bytes, served as one phase
                        std::vector<int> words;
                        std::map<int, std::set<int>> banks;
                        for (int r = 0; r < 8; ++r)
                            for (int bb = 0; bb < 16; bb += 4)
                                banks[((a8[r] + bb) / 4) % 32].insert((a8[r] + bb) / 4);
                        bool ok = true;
                        for (auto const& kv : banks)
                            ok = ok && kv.second.size() == 1;
                        CHECK(ok, "lora_up ldmatrix bank conflict matrix %d", m);
                    }
                    float regs[32][4][2];
                    for (int lane = 0; lane < 32; ++lane)
                    {
                        int const g = lane >> 2, q = lane & 3;
                        for (int m = 0; m < 4; ++m)
                            for (int v = 0; v < 2; ++v)
                                regs[lane][m][v] = up[rowAddr[8 * m + 2 * q + v] + g];
                    }
                    for (int half = 0; half < 2; ++half)
                    {
                        int const ni = 2 * np + half;
                        float Bm[16][8];
                        for (int lane = 0; lane < 32; ++lane)
                        {
                            int const g = lane >> 2, q = lane & 3;
                            for (int j = 0; j < 2; ++j)
                                for (int v = 0; v < 2; ++v)
                                    Bm[2 * q + v + 8 * j][g] = regs[lane][2 * half + j][v];
                        }
                        for (int r = 0; r < 16; ++r)
                            for (int c = 0; c < 8; ++c)
                                for (int k = 0; k < 16; ++k)
                                    C[ni][r * 8 + c] += Am[r][k] * Bm[k][c];
                    }
                }
            }
            for (int ni = 0; ni < NI; ++ni)
                for (int lane = 0; lane < 32; ++lane)
                    for (int i = 0; i < 4; ++i)
                    {
                        int const m = warpM * WM + mi * 16 + accRow(lane, i);
                        int const n = warpN * WN + ni * 8 + accCol(lane, i);
                        float want = 0.f;
                        for (int r = 0; r < rank; ++r)
                            want += act[m * rank + r] * upv[r * BN + n];
                        float const got = C[ni][accRow(lane, i) * 8 + accCol(lane, i)];
                        CHECK(got == want, "lora-up BN %d rank %d m %d n %d got %g want %g", BN, rank, m, n, got, want);
                    }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Quantize kernel LoRA-down: lane segments + permuted lora_down chunk + ldmatrix.x4.trans + m16n8k16 model
// ---------------------------------------------------------------------------------------------------------------
void testLoraDown(int rank, unsigned seed)
{
    std::mt19937 rng(seed);
    int const stride = downStride(rank);
    std::vector<float> x(kQuantRows * kQuantChunk), down(kQuantChunk * rank);
    for (auto& v : x)
        v = float(int(rng() % 17) - 8);
    for (auto& v : down)
        v = float(int(rng() % 17) - 8);
    // downSmemRow is a permutation of 0..63
    std::vector<int> perm(kQuantChunk, 0);
    for (int k = 0; k < kQuantChunk; ++k)
        ++perm[downSmemRow(k)];
    for (int k = 0; k < kQuantChunk; ++k)
        CHECK(perm[k] == 1, "downSmemRow not a permutation at %d", k);
    std::vector<float> smem(kQuantChunk * stride, 1e9f);
    for (int k = 0; k < kQuantChunk; ++k)
        for (int r = 0; r < rank; ++r)
            smem[downSmemRow(k) * stride + r] = down[k * rank + r];
    // lane segments: 8 elements of rows g and g+8 for each sub-chunk
    std::vector<float> C(16 * rank, 0.f);
    for (int sc = 0; sc < 2; ++sc)
    {
        for (int s = 0; s < 2; ++s)
        {
            float Am[16][16];
            for (int lane = 0; lane < 32; ++lane)
            {
                int const g = lane >> 2, q = lane & 3;
                float seg[2][8];
                for (int h = 0; h < 2; ++h)
                    for (int e = 0; e < 8; ++e)
                        seg[h][e] = x[(g + 8 * h) * kQuantChunk + quantElemCol(lane, sc, e)];
                // kernel: aHi = {r0[2s], r1[2s], r0[2s+1], r1[2s+1]}; word j of a row = elements 2j, 2j+1
                float const* words[4][2] = {{&seg[0][4 * s], &seg[0][4 * s + 1]}, {&seg[1][4 * s], &seg[1][4 * s + 1]},
                    {&seg[0][4 * s + 2], &seg[0][4 * s + 3]}, {&seg[1][4 * s + 2], &seg[1][4 * s + 3]}};
                for (int j = 0; j < 4; ++j)
                    for (int v = 0; v < 2; ++v)
                        Am[g + 8 * (j & 1)][2 * q + v + 8 * (j >> 1)] = *words[j][v];
            }
            for (int np = 0; np < rank / 16; ++np)
            {
                int rowAddr[32];
                for (int lane = 0; lane < 32; ++lane)
                    rowAddr[lane] = downLdsmRow(sc, s, lane) * stride + downLdsmCol(np * 16, lane);
                for (int m = 0; m < 4; ++m)
                {
                    std::map<int, std::set<int>> banks;
                    for (int r = 0; r < 8; ++r)
                        for (int bb = 0; bb < 16; bb += 4)
                            banks[((rowAddr[8 * m + r] * 2 + bb) / 4) % 32].insert((rowAddr[8 * m + r] * 2 + bb) / 4);
                    bool ok = true;
                    for (auto const& kv : banks)
                        ok = ok && kv.second.size() == 1;
                    CHECK(ok, "lora_down ldmatrix bank conflict rank %d matrix %d", rank, m);
                }
                for (int half = 0; half < 2; ++half)
                {
                    float Bm[16][8];
                    for (int lane = 0; lane < 32; ++lane)
                    {
                        int const g = lane >> 2, q = lane & 3;
                        for (int j = 0; j < 2; ++j)
                            for (int v = 0; v < 2; ++v)
                                Bm[2 * q + v + 8 * j][g] = smem[rowAddr[8 * (2 * half + j) + 2 * q + v] + g];
                    }
                    for (int r = 0; r < 16; ++r)
                        for (int c = 0; c < 8; ++c)
                            for (int k = 0; k < 16; ++k)
                                C[r * rank + (np * 16 + half * 8) + c] += Am[r][k] * Bm[k][c];
                }
            }
        }
    }
    for (int m = 0; m < 16; ++m)
        for (int r = 0; r < rank; ++r)
        {
            float want = 0.f;
            for (int k = 0; k < kQuantChunk; ++k)
                want += x[m * kQuantChunk + k] * down[k * rank + r];
            CHECK(C[m * rank + r] == want, "lora-down rank %d m %d r %d got %g want %g", rank, m, r, C[m * rank + r], want);
        }
    // each lane's 16-byte segment loads of one row half are contiguous and cover the chunk once
    std::vector<int> cover(kQuantChunk, 0);
    for (int lane = 0; lane < 4; ++lane)
        for (int sc = 0; sc < 2; ++sc)
            for (int e = 0; e < 8; ++e)
                ++cover[quantElemCol(lane, sc, e)];
    for (int k = 0; k < kQuantChunk; ++k)
        CHECK(cover[k] == 1, "quant segment coverage k %d", k);
}

} // namespace

int main(int argc, char** argv)
{
    if (argc > 1 && std::strcmp(argv[1], "--dump-unpack") == 0)
    {
        for (int b = 0; b < 256; ++b)
        {
            uint32_t r0 = 0, r1 = 0;
            unpackInt4x8(uint32_t(b) * 0x01010101u, r0, r1);
            for (int k = 0; k < 8; ++k)
                std::printf("%d%c", int(byteOf(k < 4 ? r0 : r1, k & 3)), k == 7 ? '\n' : ' ');
        }
        return 0;
    }
    testUnpack();
    testMainLoop<4>(128, 128, 2, 4, 11);
    testMainLoop<8>(128, 128, 2, 4, 12);
    testMainLoop<4>(64, 64, 2, 2, 13);
    testMainLoop<8>(64, 64, 2, 2, 14);
    for (int rank : {16, 32, 48, 64})
    {
        testLoraUp<128>(128, 2, 4, rank, 20 + rank);
        testLoraUp<64>(64, 2, 2, rank, 30 + rank);
        testLoraDown(rank, 40 + rank);
    }
    if (gFailures)
    {
        std::printf("%d check(s) failed\n", gFailures);
        return 1;
    }
    std::printf("fragment math OK\n");
    return 0;
}

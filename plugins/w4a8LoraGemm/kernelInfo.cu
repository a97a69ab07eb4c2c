// Shared-memory sizes of the kernel configurations, for the dispatcher's device-limit checks (no kernels here).
#include "gemmSm80.cuh"
#include "quantizeAct.cuh"

namespace ditas
{

size_t gemmSm80SmemBytes(int bits, Sm80Tile tile, int rank)
{
    if (bits == 4)
    {
        return tile == Sm80Tile::kLarge ? sm80::LargeConfig<4>::smemBytes(rank) : sm80::SmallConfig<4>::smemBytes(rank);
    }
    return tile == Sm80Tile::kLarge ? sm80::LargeConfig<8>::smemBytes(rank) : sm80::SmallConfig<8>::smemBytes(rank);
}

long long gemmSm80MaxRows(Sm80Tile tile)
{
    // the tile height does not depend on the weight bits
    long long const bm = tile == Sm80Tile::kLarge ? sm80::LargeConfig<4>::kBM : sm80::SmallConfig<4>::kBM;
    return bm * sm80::kMaxGridY;
}

size_t quantizeActSmemBytes(int rank)
{
    return quant::smemBytes(rank);
}

} // namespace ditas

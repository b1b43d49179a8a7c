// scatterbrain/kernels/draw_rng.h — the generator every random draw comes
// from (SplitMix64-seeded xoshiro256**, keyed by (seed, purpose, a, b)), as
// __host__ __device__ inline code: random_draws.cc's Rng wraps it on the
// host, and the CUDA kernels that draw sample rows on the device
// (kernels/cuda/sparse_math.h) run this very code, so both sides make the
// same draws. Plain C++ under g++; no CUDA types.
#ifndef SCATTERBRAIN_KERNELS_DRAW_RNG_H_
#define SCATTERBRAIN_KERNELS_DRAW_RNG_H_

#include <cstdint>

#if defined(__CUDACC__)
#define SB_DRAW_HD __host__ __device__ __forceinline__
#else
#define SB_DRAW_HD inline
#endif

namespace scatterbrain {

class DrawRng {
 public:
  // Mixes the stream key into the state so that nearby keys are unrelated.
  SB_DRAW_HD DrawRng(uint64_t seed, uint64_t purpose, uint64_t a, uint64_t b) {
    uint64_t x = seed;
    x ^= SplitMix(x) + purpose * 0xD1B54A32D192ED03ull;
    x ^= SplitMix(x) + a * 0xAEF17502108EF2D9ull;
    x ^= SplitMix(x) + b * 0x9E6C63D0676A9A99ull;
    for (int i = 0; i < 4; ++i) s_[i] = SplitMix(x);
  }
  SB_DRAW_HD uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n), n > 0 (rejection: no modulo bias; n is small here).
  SB_DRAW_HD uint64_t Below(uint64_t n) {
    const uint64_t limit = ~0ull - ~0ull % n;
    uint64_t x;
    do {
      x = Next();
    } while (x >= limit);
    return x % n;
  }

 private:
  // Advances x and returns the mixed value.
  SB_DRAW_HD static uint64_t SplitMix(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  SB_DRAW_HD static uint64_t Rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
  }
  uint64_t s_[4];
};

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_DRAW_RNG_H_

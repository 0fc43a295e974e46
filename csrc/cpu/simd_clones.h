// Function multiversioning of the CPU launchers: a function marked FEATUP_SIMD_CLONES is
// compiled for AVX-512 and AVX2 + FMA as well, and the loader picks the widest the CPU has.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
// x86-64-v3 is AVX2 + FMA (plain "avx2" does not imply FMA), x86-64-v4 adds AVX-512.
#define FEATUP_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__)
// Compilers without the x86-64 level names: one ISA extension per clone, so no FMA.
#define FEATUP_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FEATUP_SIMD_CLONES
#endif
// Inlined into each SIMD clone, so the loops are vectorised for that clone's target.
#define FEATUP_INLINE inline __attribute__((always_inline))

/*
 * philox.cuh — Philox4x32-10 and the LoRA dropout mask built on it; C and CUDA alike: the
 * CPU reference includes it, and the emitter embeds the same text in the dropout kernels.
 *
 * Philox4x32-10 is the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel
 * random numbers: as easy as 1, 2, 3" (SC'11), the one cuRAND calls curand_Philox4x32_10: a
 * 10-round keyed bijection of a 128-bit counter, out = philox(ctr, key), with no state. It is
 * checked against the known-answer vectors of Random123's kat_vectors (tests/test_philox.c).
 *
 * Dropout mask contract (the GPU kernels must produce the same bits):
 *   element i (uint64, the linear index into the tensor, e.g. m*in + k of x [M, in]) of a
 *   stream (uint32, e.g. layer*8 + projection) under a seed (uint64):
 *     ctr  = {(uint32)(i/4), (uint32)((i/4) >> 32), stream, 0}
 *     key  = {(uint32)seed, (uint32)(seed >> 32)}
 *     word = philox4x32_10(ctr, key)[i % 4]
 *     keep = word >= threshold,   threshold = (uint32)floor(p * 2^32),   p in [0, 1)
 *   and a kept element is scaled by s2_dropout_scale(p) = 1/(1-p) (inverted dropout, as
 *   torch.nn.Dropout does, so the expectation of drop(x) is x).
 *
 * Why counter-based: any element's mask bit is a pure function of (seed, stream, i), so the
 * backward regenerates exactly the forward's mask from the same three numbers instead of
 * storing M*in bits per adapter, and any thread can produce any element's bit without a
 * sequential generator state to advance. Each Philox call yields four 32-bit words, so four
 * consecutive elements (an aligned quad i = 4c .. 4c+3) share one call: a kernel whose thread
 * owns a quad pays one call per four elements. The stream sits in its own counter word, so
 * distinct (stream, i) pairs never share a counter for i < 2^66; distinct seeds are distinct
 * keys. P(keep) = 1 - threshold / 2^32 = 1 - p up to 2^-32 (exact when p * 2^32 is an integer).
 *
 * Header only, C11, nothing beyond <stdint.h>, so the same text can be the device twin: a CUDA
 * translation unit defines S2_PHILOX_FN as `static __device__ __forceinline__` (and, under
 * NVRTC without <stdint.h>, S2_PHILOX_NO_STDINT after declaring uint32_t and uint64_t) before
 * including it. Only 32x32->64 multiplies, adds, xors and one float multiply are used.
 */
#ifndef S2_PHILOX_H
#define S2_PHILOX_H

#ifndef S2_PHILOX_NO_STDINT
#include <stdint.h>
#endif

#ifndef S2_PHILOX_FN
#define S2_PHILOX_FN static inline
#endif

/* Round multipliers and key-schedule (Weyl) increments of Philox4x32 (SC'11, Table 2; the
 * increments are the golden ratio and sqrt(3) - 1 in 0.32 fixed point). */
#define S2_PHILOX_M0 0xD2511F53u
#define S2_PHILOX_M1 0xCD9E8D57u
#define S2_PHILOX_W0 0x9E3779B9u
#define S2_PHILOX_W1 0xBB67AE85u

/* One round on x [4] with round key k [2]: two 32x32->64 products, the high halves xored
 * into the other words with the key, the words permuted (0,1,2,3) <- (hi1^x1^k0, lo1,
 * hi0^x3^k1, lo0), as Random123's _philox4x32round. */
S2_PHILOX_FN void s2_philox4x32_round(uint32_t x[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)S2_PHILOX_M0 * x[0];
    uint64_t p1 = (uint64_t)S2_PHILOX_M1 * x[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t y0 = hi1 ^ x[1] ^ k[0];
    uint32_t y2 = hi0 ^ x[3] ^ k[1];
    x[0] = y0;
    x[1] = lo1;
    x[2] = y2;
    x[3] = lo0;
}

/* Philox4x32 with R rounds: the first round uses the key itself, each later one the key
 * bumped by (W0, W1) once more. R = 10 is the standard (crush-resistant with margin); R = 7
 * exists only so the tests can check the round structure against Random123's 7-round KATs. */
S2_PHILOX_FN void s2_philox4x32_r(int rounds, const uint32_t ctr[4], const uint32_t key[2],
                                  uint32_t out[4]) {
    uint32_t x[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int r = 0; r < rounds; r++) {
        if (r > 0) {
            k[0] += S2_PHILOX_W0;
            k[1] += S2_PHILOX_W1;
        }
        s2_philox4x32_round(x, k);
    }
    out[0] = x[0];
    out[1] = x[1];
    out[2] = x[2];
    out[3] = x[3];
}

/* Philox4x32-10: ctr [4], key [2] -> out [4]. */
S2_PHILOX_FN void s2_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    s2_philox4x32_r(10, ctr, key, out);
}

/* ---- dropout mask ---- */

/* threshold = floor(p * 2^32) for p in [0, 1). p * 2^32 is exact in fp32 (a power-of-two
 * scale) and below 2^32 for every float p < 1, so the conversion truncates = floors. p <= 0
 * (and NaN) gives 0, keep everything; p >= 1 is not a dropout probability and saturates to
 * 0xFFFFFFFF (keeps ~2^-32): callers validate p first (the LoRA reference rejects it). */
S2_PHILOX_FN uint32_t s2_dropout_threshold(float p) {
    if (!(p > 0.0f))
        return 0;
    if (!(p < 1.0f))
        return 0xFFFFFFFFu;
    return (uint32_t)(p * 4294967296.0f);
}

/* Scale of a kept element, 1/(1-p) in fp32 (the value a kernel multiplies by; 1 at p = 0). */
S2_PHILOX_FN float s2_dropout_scale(float p) { return 1.0f / (1.0f - p); }

/* The four mask words of quad q (elements 4q .. 4q+3): words [4]. */
S2_PHILOX_FN void s2_dropout_words4(uint64_t seed, uint32_t stream, uint64_t q,
                                    uint32_t words[4]) {
    const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), stream, 0u};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    s2_philox4x32_10(ctr, key, words);
}

/* Keep bits of quad q against a precomputed threshold: keep [4], each 0 or 1. The form for
 * loops: one Philox call per four elements. */
S2_PHILOX_FN void s2_dropout_keep4(uint64_t seed, uint32_t stream, uint64_t q,
                                   uint32_t threshold, int keep[4]) {
    uint32_t w[4];
    s2_dropout_words4(seed, stream, q, w);
    for (int j = 0; j < 4; j++)
        keep[j] = w[j] >= threshold;
}

/* Keep bit (0 or 1) of element i against a precomputed threshold. */
S2_PHILOX_FN int s2_dropout_keep_thr(uint64_t seed, uint32_t stream, uint64_t i,
                                     uint32_t threshold) {
    uint32_t w[4];
    s2_dropout_words4(seed, stream, i >> 2, w);
    return w[i & 3] >= threshold;
}

/* Keep bit (0 or 1) of element i at dropout probability p: the contract above. */
S2_PHILOX_FN int s2_dropout_keep(uint64_t seed, uint32_t stream, uint64_t i, float p) {
    return s2_dropout_keep_thr(seed, stream, i, s2_dropout_threshold(p));
}

#endif

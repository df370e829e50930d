/* check_rng.h — the random inputs of the GPU checks (gpu_check.c, api_check.c): xorshift64*,
 * normal draws by Box-Muller. Each program seeds rng_state itself (never 0). */
#ifndef S2_TESTS_CHECK_RNG_H
#define S2_TESTS_CHECK_RNG_H

#include <math.h>
#include <stdint.h>

static uint64_t rng_state;

static double rng_u01(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static float rng_normal(void)
{
    double u = rng_u01(), v = rng_u01();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v));
}

#endif

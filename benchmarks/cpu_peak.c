/* One core's peaks, measured rather than assumed (issue 24: what bounds the INT8 speed-up on this CPU).
 *
 *   clock: a chain of dependent integer adds, one per cycle;
 *   fp32:  ten independent 512-bit FMA chains (16 fp32 multiply-adds each);
 *   int8:  ten independent 512-bit VPDPBUSD chains (64 u8 x s8 multiply-adds each, AVX-512 VNNI).
 *
 * Prints one line: "clock GHZ fp32 GMACS int8 GMACS" (per core). Built and run by benchmarks/providers.py:
 *   gcc -O2 -mavx512f -mavx512bw -mavx512vnni -mfma benchmarks/cpu_peak.c -o cpu_peak && ./cpu_peak
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ROUNDS 20000000L
#define TEN(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    double started = now();
    long x = 0;
    for (long i = 0; i < 10 * ROUNDS; i++) {
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    }
    double ghz = 40.0 * ROUNDS / (now() - started) / 1e9;

    __m512 b = _mm512_set1_ps(0.5f), c = _mm512_set1_ps(0.25f);
#define F_INIT(k) __m512 f##k = _mm512_set1_ps(k * 0.1f);
#define F_STEP(k) f##k = _mm512_fmadd_ps(f##k, b, c);
#define F_KEEP(k) __asm__ volatile("" : "+v"(f##k)); /* each chain stays live and in its register */
#define F_SUM(k) fsum += _mm512_reduce_add_ps(f##k);
    TEN(F_INIT)
    started = now();
    for (long i = 0; i < ROUNDS; i++) {
        TEN(F_STEP)
        TEN(F_KEEP)
    }
    double fp32 = ROUNDS * 10.0 * 16 / (now() - started) / 1e9;
    float fsum = 0;
    TEN(F_SUM)

    __m512i u = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
#define I_INIT(k) __m512i a##k = _mm512_set1_epi32(k);
#define I_STEP(k) a##k = _mm512_dpbusd_epi32(a##k, u, w);
#define I_KEEP(k) __asm__ volatile("" : "+v"(a##k));
#define I_SUM(k) isum += _mm512_reduce_add_epi32(a##k);
    TEN(I_INIT)
    started = now();
    for (long i = 0; i < ROUNDS; i++) {
        TEN(I_STEP)
        TEN(I_KEEP)
    }
    double int8 = ROUNDS * 10.0 * 64 / (now() - started) / 1e9;
    long isum = 0;
    TEN(I_SUM)

    printf("clock %.3f fp32 %.2f int8 %.2f\n", ghz, fp32, int8);
    return (fsum == 12345.0f && isum == 1) ? 2 : 0; /* the sums are used: the chains are not optimised away */
}

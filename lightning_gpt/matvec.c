/* y = W x + b for a single row x: the matrix products of one decoding step on a CPU.
 *
 * Decoding one token reads every weight once, so the step is bound by memory bandwidth; this
 * streams each weight row once, four rows at a time (four independent sums the compiler turns
 * into SIMD), and splits the rows over the threads PyTorch uses. See lightning_gpt/matvec.py.
 */
#include <limits.h> /* defines __GLIBC__ on glibc */
#include <omp.h>

#ifndef WIDEST /* tests build with -DWIDEST= to run the plain code on any CPU */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
/* One build runs at each CPU's best width: the loader picks the clone (GCC function multi-versioning,
 * which needs glibc's ifunc). */
#define WIDEST __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define WIDEST
#endif
#endif

WIDEST static void rows_times_x(const float *w, const float *x, const float *b, float *y,
                                long first, long last, long cols)
{
    long r = first;
    for (; r + 4 <= last; r += 4) {
        const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (long c = 0; c < cols; c++) {
            s0 += w0[c] * x[c];
            s1 += w1[c] * x[c];
            s2 += w2[c] * x[c];
            s3 += w3[c] * x[c];
        }
        y[r] = b ? s0 + b[r] : s0;
        y[r + 1] = b ? s1 + b[r + 1] : s1;
        y[r + 2] = b ? s2 + b[r + 2] : s2;
        y[r + 3] = b ? s3 + b[r + 3] : s3;
    }
    for (; r < last; r++) {
        const float *wr = w + r * cols;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < cols; c++)
            s += wr[c] * x[c];
        y[r] = b ? s + b[r] : s;
    }
}

/* w [rows, cols] row-major, x [cols], b [rows] or NULL, y [rows]; threads >= 1. */
void lightning_gpt_matvec(const float *w, const float *x, const float *b, float *y,
                          long rows, long cols, int threads)
{
    long groups = (rows + 3) / 4; /* rows go to threads in groups of four */
    if (threads < 1)
        threads = 1;
#pragma omp parallel num_threads(threads)
    {
        long team = omp_get_num_threads(), me = omp_get_thread_num();
        long first = groups * me / team * 4, last = groups * (me + 1) / team * 4;
        rows_times_x(w, x, b, y, first, last < rows ? last : rows, cols);
    }
}

// Copied unchanged from the reference measurement of issue 17 (the team's shared/gpu/app.cu,
// measured on an NVIDIA H200 with driver 580.159); bench/gpu.py compiles it with nvcc.
// A GPU process with state that only survives if GPU memory is checkpointed: a buffer of N floats
// filled once, and a counter that a kernel bumps every tick. SIGUSR1: verify the buffer on the GPU.
#include <cstdio>
#include <csignal>
#include <cstdlib>
#include <unistd.h>

__global__ void fill(float *b, size_t n, float seed) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) b[i] = (float)(i % 1000003) * 0.5f + seed;
}
__global__ void check(const float *b, size_t n, float seed, unsigned long long *bad) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n && b[i] != (float)(i % 1000003) * 0.5f + seed) atomicAdd(bad, 1ULL);
}
__global__ void bump(unsigned long long *c) { *c += 1; }

static volatile sig_atomic_t verify = 0;
static void on_usr1(int) { verify = 1; }

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
    size_t n = mib * 1024 * 1024 / sizeof(float);
    float seed = 7.25f;
    float *buf; unsigned long long *ctr, *bad;
    if (cudaMalloc(&buf, n * sizeof(float)) || cudaMalloc(&ctr, 8) || cudaMalloc(&bad, 8)) { puts("cudaMalloc failed"); return 1; }
    cudaMemset(ctr, 0, 8);
    fill<<<(n + 255) / 256, 256>>>(buf, n, seed);
    cudaDeviceSynchronize();
    signal(SIGUSR1, on_usr1);
    printf("ready pid=%d mib=%zu\n", getpid(), mib); fflush(stdout);
    for (;;) {
        bump<<<1, 1>>>(ctr);
        unsigned long long c = 0;
        if (cudaMemcpy(&c, ctr, 8, cudaMemcpyDeviceToHost)) { puts("memcpy failed"); fflush(stdout); return 2; }
        printf("tick %llu\n", c); fflush(stdout);
        if (verify) {
            verify = 0;
            cudaMemset(bad, 0, 8);
            check<<<(n + 255) / 256, 256>>>(buf, n, seed, bad);
            unsigned long long b = 1;
            cudaError_t e = cudaMemcpy(&b, bad, 8, cudaMemcpyDeviceToHost);
            printf("verify err=%d mismatches=%llu counter=%llu\n", (int)e, b, c); fflush(stdout);
        }
        usleep(100000);
    }
}

// Host-side entry points of the CUDA kernels (src/kernels/*_cuda.cu). Everything is
// enqueued on the given stream and never synchronises, so a whole decode step can be
// captured into one CUDA graph. Activations are fp32 row-major on the device; weights
// stay in their stored dtype (f32, f16, bf16) with PyTorch Linear layout [N][K].
//
// The paged KV cache on the device has model/kv_cache.h's layout
// ([block][layer][K|V][kv_head][slot][head_dim]) and block ids, in fp32 (then a host cache's
// bytes can be copied over for tests), f16 / bf16 (half the traffic and memory) or int8
// (a quarter: each row of head_dim codes has an fp32 scale, max|x| / 127, stored after the
// block_size rows of its kv head).
#pragma once
#ifdef ANYBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

#ifdef __CUDACC__
#define ANYBIT_HOST_DEVICE __host__ __device__
#else
#define ANYBIT_HOST_DEVICE
#endif

namespace anybit {
struct QbitsGpuPack;  // kernels/qbits_cuda_pack.h
}  // namespace anybit

namespace anybit::cuda {

// Throws anybit::Error naming `what` and CUDA's message when `e` is an error.
void check(cudaError_t e, const char* what);
#define ANYBIT_CUDA_CHECK(call) ::anybit::cuda::check((call), #call)
// Checks the launch that was just enqueued (configuration errors show up here).
void check_launch(const char* kernel);

int device_count();  // 0 when the driver or device is missing

struct DeviceWeight {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;  // N outputs, K inputs
  const void* data = nullptr;  // device, rows * dtype_row_bytes(dtype, cols)
};

// Transform applied to each input row on the fly inside the GEMV (decode) path; the
// GEMM path only takes InputOp::None (run rmsnorm / silu_mul first).
enum class InputOp : int {
  None = 0,
  RmsNorm = 1,  // x / rms(x) * norm_w  (norm_w has K entries)
  SiluMul = 2,  // row is [gate K | up K]: silu(gate) * up
};

struct LinearArgs {
  const float* x = nullptr;
  int64_t m = 0;
  int64_t ldx = 0;  // elements between input rows
  InputOp op = InputOp::None;
  const float* norm_w = nullptr;
  float eps = 1e-5f;
  const float* bias = nullptr;  // [N] or null
  bool accumulate = false;      // y += x·W^T (+bias) instead of y =
  // W's rows interleave gate and up (gate_0, up_0, gate_1, ...): y[i][j] = silu(gate_j) * up_j,
  // N/2 columns (GEMV path only; not with accumulate).
  bool silu_pairs = false;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Largest m the fused GEMV path takes; above it linear() runs the tiled GEMM.
constexpr int64_t kGemvMaxRows = 4;
// Largest m linear_qbits sends to gemv_qbits (the tensor-core GEMV reads the weights once
// for up to 16 rows of x, where they fit its shared memory); above it mma_qbits.
constexpr int64_t kQbitsGemvMaxRows = 16;

// y = op(x) · W^T (+ bias) (+ y). GEMV for m <= kGemvMaxRows when K suits 16-byte loads,
// tiled GEMM otherwise (op must then be None).
void linear(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s);
// The paths directly (tests and benchmarks pick one).
void gemv(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s);
void gemm(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s);
bool gemv_supported(const LinearArgs& a, const DeviceWeight& w);
// Grows the tensor-core GEMM's workspace for up to m rows of x against N x K weights, so
// that later gemm() calls need no allocation: inside a graph capture, a bf16 GEMM whose
// workspace was not reserved runs on the (slow) SIMT kernel. Never call during a capture.
void reserve_gemm_workspace(int64_t m, int64_t K, int64_t N, cudaStream_t s);

// ---- QBITS (any-bit, 2..8) weights: W{bits}A16 GEMV, src/kernels/matmul_qbits_cuda.cu --------
// Device copy of a QbitsGpuPack (layout in kernels/qbits_cuda_pack.h).
// Zero rows after each device array of a QBITS weight: the SIMT GEMV's last group of 4 rows
// reads them instead of clamping each row index.
constexpr int kQbitsPadRows = 3;
struct QbitsDeviceWeight {
  int64_t rows = 0, cols = 0;  // N outputs, K inputs
  int bits = 0, group = 0;
  int act_bits = 0;  // 8: int8 activations per token (W*A8, a8_qbits); 0: fp activations
  bool asymmetric = false;
  bool scales_f16 = false, zeros_f16 = false;  // else fp32
  const uint8_t* planes[3] = {nullptr, nullptr, nullptr};  // planes per qbits_plane_split(bits)
  // Planes, scales and zeros are each followed by kQbitsPadRows rows of zeros (upload_qbits).
  const void* scales = nullptr;  // [rows][cols/group]
  const void* zeros = nullptr;   // [rows][cols/group], asymmetric only
  const float* inv_input_scale = nullptr;  // [cols] or null
  size_t weight_bytes = 0;  // bytes one GEMV streams (codes + scales + zeros)
};
// The device weight and the one allocation behind it (free with free_qbits).
struct QbitsDeviceAlloc {
  QbitsDeviceWeight w;
  void* buffer = nullptr;
  size_t bytes = 0;
};
// Synchronous upload (cudaMalloc + cudaMemcpy): at load time, never inside a graph capture.
QbitsDeviceAlloc upload_qbits(const QbitsGpuPack& p);
void free_qbits(QbitsDeviceAlloc& a);

// y = op(x) * (1/input_scale) . W^T (+ bias) (+ y), fp32 activations and accumulation. Same
// LinearArgs semantics as gemv() (InputOp None / RmsNorm / SiluMul, bias, accumulate,
// silu_pairs). m <= kGemvMaxRows runs one fused GEMV launch; larger m runs it once per 4 rows
// (correct but re-reads W; linear_qbits takes mma_qbits there). x (and norm_w) must be 16-byte
// aligned with ldx % 4 == 0. Enqueue only: graph-capturable.
void gemv_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s);
// Which kernel gemv_qbits runs: 1 the tensor-core GEMV (m <= 16 per launch where x fits in
// shared memory: up to K of about 4,900 at m = 16), 0 the SIMT one
// (m <= 4), 2 (default) chosen per call by m and K (ANYBIT_QBITS_GEMV_TC=0/1 forces). For
// tests and A/B measurements; not synchronised with launches on other threads.
void set_qbits_gemv_tc(int mode);
// Prefill (any m, op None only): W dequantized to bf16 into `scratch` (at least
// qbits_scratch_bytes(w) bytes, 256-byte aligned, device), then the bf16 tensor-core gemm().
size_t qbits_scratch_bytes(const QbitsDeviceWeight& w);
void gemm_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s);
// Batched decode and short chunks (m <= kMmaMaxRows, op None): the tensor-core GEMM that
// dequantizes the packed weights in registers (src/kernels/matmul_qbits_mma_cuda.cu); x is
// rounded to f16 per token row scaled by a power of two, each weight to f16 once. Needs
// qbits_mma_scratch_bytes(w) bytes of 256-byte aligned device scratch. Graph-capturable.
constexpr int64_t kMmaMaxRows = 64;
size_t qbits_mma_scratch_bytes(const QbitsDeviceWeight& w);
void mma_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s);
// W*A8 (act_bits 8, src/kernels/matmul_qbits_a8_cuda.cu), any m: each token row of op(x) *
// (1/input_scale) quantized to int8 with one scale (the scalar reference's semantics), then the
// integer tensor-core GEMM on the packed codes. Same LinearArgs semantics as gemv_qbits (every
// op, bias, accumulate, SiLU pairs). `scratch` holds qbits_scratch_bytes(w) bytes (256-byte
// aligned). Graph-capturable. The A16 entry points above refuse act_bits 8 weights.
size_t qbits_a8_scratch_bytes(const QbitsDeviceWeight& w);
void a8_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s);
// a8_qbits for act_bits 8; else gemv_qbits for m <= kGemvMaxRows and for m <=
// kQbitsGemvMaxRows where one tensor-core GEMV launch takes every row, mma_qbits up to
// kMmaMaxRows, else gemm_qbits (op must then be None). `scratch` holds
// qbits_scratch_bytes(w), which covers every path.
void linear_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s);
// The kernel linear_qbits runs for m rows: "a8", "gemv-simt", "gemv-tc", "mma" or "dequant+gemm".
const char* linear_qbits_path(int64_t m, const QbitsDeviceWeight& w);

void rmsnorm(const float* x, int64_t ldx, const float* w, int64_t m, int64_t n, float eps, float* out,
             int64_t ldo, cudaStream_t s);
// out[m][n] = silu(gu[i][c]) * gu[i][n + c]  (gu rows are [gate n | up n])
void silu_mul(const float* gu, int64_t m, int64_t n, float* out, cudaStream_t s);
// The same over interleaved rows [gate_0, up_0, gate_1, up_1, ...] (2n floats each).
void silu_mul_pairs(const float* gu, int64_t m, int64_t n, float* out, cudaStream_t s);
// x[t] = table[tokens[t]] widened to fp32.
void embed(const int32_t* tokens, int64_t n_tok, const DeviceWeight& table, float* x, cudaStream_t s);
// out[r] = x[rows[r]] (n floats each).
void gather_rows(const float* x, const int32_t* rows, int64_t n_rows, int64_t n, float* out, cudaStream_t s);
// out[r] = argmax of x[r] (first index of the maximum, NaN never wins).
void argmax_rows(const float* x, int64_t n_rows, int64_t n, int32_t* out, cudaStream_t s);

struct KVLayout {
  void* base = nullptr;
  DType dtype = DType::F32;  // F32, F16, BF16 or I8 elements
  int64_t n_layers = 0, n_kv_heads = 0, head_dim = 0, block_size = 0;
  ANYBIT_HOST_DEVICE int64_t elem_bytes() const { return dtype == DType::F32 ? 4 : dtype == DType::I8 ? 1 : 2; }
  ANYBIT_HOST_DEVICE int64_t row_bytes() const { return head_dim * elem_bytes(); }
  // One kv head's part of a block: block_size rows, then (I8) block_size fp32 scales.
  ANYBIT_HOST_DEVICE int64_t head_bytes() const {
    return block_size * (row_bytes() + (dtype == DType::I8 ? 4 : 0));
  }
  ANYBIT_HOST_DEVICE int64_t block_bytes() const { return n_layers * 2 * n_kv_heads * head_bytes(); }
  ANYBIT_HOST_DEVICE int64_t block_elems() const { return n_layers * 2 * n_kv_heads * block_size * head_dim; }
  // Byte offset of the part of `block` holding K (kv = 0) or V (kv = 1) of kv head kvh.
  ANYBIT_HOST_DEVICE int64_t head_offset(int64_t block, int64_t layer, int kv, int64_t kvh) const {
    return block * block_bytes() + ((layer * 2 + kv) * n_kv_heads + kvh) * head_bytes();
  }
};
// Throws unless dtype is F32, F16, BF16 or I8.
void check_kv_dtype(DType dtype, const char* what);

// Rotates q and k of each token in the fused qkv rows ([q | k | v], ld floats apart) and
// writes k and v into the cache at slot[t] = block * block_size + offset.
struct RopeKVArgs {
  float* qkv = nullptr;
  int64_t ld = 0;
  int64_t n_tok = 0, n_heads = 0;
  const int32_t* pos = nullptr;   // [n_tok]
  const int32_t* slot = nullptr;  // [n_tok]
  const float* inv_freq = nullptr;  // [head_dim / 2]
  KVLayout kv;
  int64_t layer = 0;
};
void rope_kv_write(const RopeKVArgs& a, cudaStream_t s);

struct AttentionArgs {
  const float* q = nullptr;  // rows of n_heads * head_dim, ldq floats apart
  int64_t ldq = 0;
  float* out = nullptr;      // rows of n_heads * head_dim, ldo floats apart
  int64_t ldo = 0;
  KVLayout kv;
  int64_t layer = 0, n_heads = 0;
  float scale = 1.0f;
  int64_t window = 0;  // sliding window (0 = unlimited)
  int64_t n_tok = 0, n_seq = 0;
  const int32_t* tok_pos = nullptr;       // [n_tok] position of each query
  const int32_t* tok_seq = nullptr;       // [n_tok] its sequence
  const int32_t* block_tables = nullptr;  // [n_seq][max_blocks]
  int64_t max_blocks = 0;
  // prefill: each sequence's queries are rows seq_qstart[s] .. + seq_nq[s]
  const int32_t* seq_qstart = nullptr;
  const int32_t* seq_nq = nullptr;
  int64_t max_nq = 0;
  // decode (split-KV): workspace of n_tok * n_heads * n_splits * (head_dim + 2) floats
  float* partial = nullptr;
  int64_t n_splits = 1, split_len = 0;
  // Optional, tensor-core decode only (attention_decode_mma_supported): RoPE and the KV-cache
  // write of each row's own token fused in, so rope_kv_write is not run. q rows are then the
  // un-rotated fused rows [q | k | v] (ldq apart), slot[t] the token's cache slot.
  const float* rope_inv_freq = nullptr;  // [head_dim / 2]; non-null turns the fusion on
  const int32_t* slot = nullptr;
};
// One query per row, any number of rows; the context of row t is [0, tok_pos[t]].
// Each (row, kv head, split) is one block covering all the query heads of that kv head.
// f16 / bf16 / int8 caches run attention_decode_mma when attention_decode_mma_supported(),
// else the SIMT kernel (fp32 caches always take the SIMT kernel: exact fp32 products).
void attention_decode(const AttentionArgs& a, cudaStream_t s);
// The paths directly (tests and benchmarks pick one). The SIMT kernel takes every dtype.
void attention_decode_simt(const AttentionArgs& a, cudaStream_t s);
// Tensor cores (mma.sync m16n8k16, src/kernels/attention_decode_mma_cuda.cu): f16 / bf16 / int8
// cache, head_dim 32/64/96/128, block_size % 16 == 0, at most 8 query heads per kv head. q and
// the probabilities are rounded to the cache's dtype (f16 for int8 caches, whose codes are
// exact in f16 and whose scales are applied to the scores and the probabilities); scores and
// sums stay fp32.
bool attention_decode_mma_supported(const AttentionArgs& a);
void attention_decode_mma(const AttentionArgs& a, cudaStream_t s);
// Tiles of queries per sequence and head, K/V tiles in shared memory, online softmax.
void attention_prefill(const AttentionArgs& a, cudaStream_t s);
// Split count and length for a per-sequence capacity of `max_ctx` positions.
void decode_splits(int64_t max_ctx, int64_t& n_splits, int64_t& split_len);

constexpr int64_t kMaxHeadDim = 128;

}  // namespace anybit::cuda

#endif  // ANYBIT_WITH_CUDA

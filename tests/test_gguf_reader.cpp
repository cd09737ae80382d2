// GGUF container: every metadata type, tensor infos and row-major shapes, the
// writer/reader pair, and hand-made malformed files that must fail cleanly.
#include <gtest/gtest.h>

#include <cmath>

#include "formats/gguf_reader.h"
#include "formats/gguf_writer.h"
#include "test_gguf_common.h"

namespace anybit {
namespace {

using gguf_test::Bytes;
using gguf_test::expect_file_error;
using gguf_test::TempDir;

constexpr uint32_t kMagic = 0x46554747;

// A valid header with one u32 key and one F32 tensor [2, 3] (GGUF dims 3, 2).
Bytes valid_file(uint32_t version = 3) {
  Bytes f;
  f.u32(kMagic).u32(version).u64(1).u64(1);
  f.str("general.architecture").u32(8).str("llama");
  f.str("w").u32(2).u64(3).u64(2).u32(0).u64(0);
  f.pad(32);
  for (int i = 0; i < 6; ++i) f.put<float>(float(i));
  return f;
}

TEST(GgufReader, ParsesEveryMetadataType) {
  TempDir dir;
  Bytes f;
  f.u32(kMagic).u32(3).u64(0).u64(15);
  f.str("u8").u32(0).put<uint8_t>(200);
  f.str("i8").u32(1).put<int8_t>(-100);
  f.str("u16").u32(2).put<uint16_t>(60000);
  f.str("i16").u32(3).put<int16_t>(-30000);
  f.str("u32").u32(4).put<uint32_t>(4000000000u);
  f.str("i32").u32(5).put<int32_t>(-2000000000);
  f.str("f32").u32(6).put<float>(1.5f);
  f.str("bool").u32(7).put<uint8_t>(1);
  f.str("str").u32(8).str("héllo");
  f.str("u64").u32(10).put<uint64_t>(uint64_t(1) << 40);
  f.str("i64").u32(11).put<int64_t>(-(int64_t(1) << 40));
  f.str("f64").u32(12).put<double>(-2.25);
  f.str("arr_i32").u32(9).u32(5).u64(3).put<int32_t>(7).put<int32_t>(-8).put<int32_t>(9);
  f.str("arr_str").u32(9).u32(8).u64(2).str("a b").str("");
  // An array of two arrays of f32.
  f.str("nested").u32(9).u32(9).u64(2);
  f.u32(6).u64(1).put<float>(0.5f);
  f.u32(6).u64(2).put<float>(1.0f).put<float>(2.0f);
  const std::string path = dir.file("types.gguf");
  f.save(path);

  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.keys().size(), 15u);
  EXPECT_EQ(g.keys()[0], "u8");
  EXPECT_EQ(g.get_int("u8"), 200);
  EXPECT_EQ(g.get_int("i8"), -100);
  EXPECT_EQ(g.get_int("u16"), 60000);
  EXPECT_EQ(g.get_int("i16"), -30000);
  EXPECT_EQ(g.get_int("u32"), 4000000000LL);
  EXPECT_EQ(g.get_int("i32"), -2000000000LL);
  EXPECT_FLOAT_EQ(float(g.get_float("f32")), 1.5f);
  EXPECT_TRUE(g.get_bool("bool", false));
  EXPECT_EQ(g.get_str("str"), "héllo");
  EXPECT_EQ(g.get_int("u64"), int64_t(1) << 40);
  EXPECT_EQ(g.get_int("i64"), -(int64_t(1) << 40));
  EXPECT_DOUBLE_EQ(g.get_float("f64"), -2.25);
  EXPECT_EQ(g.get_i32_array("arr_i32"), (std::vector<int32_t>{7, -8, 9}));
  EXPECT_EQ(g.get_str_array("arr_str"), (std::vector<std::string>{"a b", ""}));
  const GgufValue* n = g.find("nested");
  ASSERT_NE(n, nullptr);
  ASSERT_EQ(n->elem_type, GgufType::Array);
  ASSERT_EQ(n->arr.size(), 2u);
  EXPECT_EQ(n->arr[1].arr.size(), 2u);
  EXPECT_FLOAT_EQ(float(n->arr[1].arr[1].f), 2.0f);
  EXPECT_EQ(g.get_int("missing", 42), 42);
  EXPECT_TRUE(g.tensors().empty());
  // Wrong-type requests name the file and the key.
  expect_file_error(path, "metadata str has type string", [&] { g.get_int("str"); });
  expect_file_error(path, "missing metadata nope", [&] { g.get_str("nope"); });
  expect_file_error(path, "expected an array of strings", [&] { g.get_str_array("arr_i32"); });
}

TEST(GgufReader, TensorShapesAreRowMajorAndDataIsMapped) {
  TempDir dir;
  for (uint32_t version : {2u, 3u}) {
    const std::string path = dir.file("v" + std::to_string(version) + ".gguf");
    valid_file(version).save(path);
    const GgufFile g = GgufFile::open(path);
    EXPECT_EQ(g.version(), version);
    EXPECT_EQ(g.alignment(), 32u);
    EXPECT_EQ(g.data_offset() % 32, 0u);
    ASSERT_EQ(g.tensors().size(), 1u);
    const TensorView v = g.view(g.tensors()[0]);
    EXPECT_EQ(v.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(v.dtype, DType::F32);
    EXPECT_EQ(v.nbytes, 24u);
    const float* d = static_cast<const float*>(v.data);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(d[i], float(i));
  }
}

TEST(GgufWriter, WritesWhatTheReaderReadsBack) {
  TempDir dir;
  std::mt19937 rng(1234);
  const auto q8 = gguf_test::random_bytes(3 * 64 / 32 * 34, rng);  // [3, 64] Q8_0
  const auto q4 = gguf_test::random_bytes(2 * 32 / 32 * 18, rng);  // [2, 32] Q4_0
  std::vector<uint16_t> bf(5 * 7);
  for (auto& x : bf) x = uint16_t(rng());
  std::vector<float> f32(4 * 3 * 2 * 5);
  for (auto& x : f32) x = float(rng() % 1000) / 7.0f;

  for (size_t alignment : {32u, 64u}) {
    GgufWriter w(alignment);
    w.set("general.architecture", GgufValue::make_str("test"));
    w.set("k.u32", GgufValue::make_u32(7));
    w.set("k.f32", GgufValue::make_f32(0.25f));
    w.set("k.bool", GgufValue::make_bool(true));
    w.set("k.strs", GgufValue::make_str_array({"x", "y z"}));
    w.set("k.u32", GgufValue::make_u32(8));  // overwrite keeps one entry
    w.add_tensor("q8", 8, {3, 64}, q8.data(), q8.size());
    w.add_tensor("q4", 2, {2, 32}, q4.data(), q4.size());
    w.add_tensor("bf", 30, {5, 7}, bf.data(), bf.size() * 2);
    w.add_tensor("f4d", 0, {4, 3, 2, 5}, f32.data(), f32.size() * 4);
    const std::string path = dir.file("w" + std::to_string(alignment) + ".gguf");
    w.write(path);
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

    const GgufFile g = GgufFile::open(path);
    EXPECT_EQ(g.alignment(), alignment);
    EXPECT_EQ(g.keys().size(), alignment == 32 ? 5u : 6u);
    EXPECT_EQ(g.get_int("k.u32"), 8);
    EXPECT_EQ(g.get_float("k.f32"), 0.25);
    EXPECT_TRUE(g.get_bool("k.bool", false));
    EXPECT_EQ(g.get_str_array("k.strs"), (std::vector<std::string>{"x", "y z"}));
    auto check = [&](const char* name, DType dt, std::vector<int64_t> shape, const void* data, size_t n) {
      const GgufTensorInfo* ti = g.find_tensor(name);
      ASSERT_NE(ti, nullptr) << name;
      EXPECT_EQ(ti->offset % alignment, 0u);
      const TensorView v = g.view(*ti);
      EXPECT_EQ(v.dtype, dt) << name;
      EXPECT_EQ(v.shape, shape) << name;
      ASSERT_EQ(v.nbytes, n) << name;
      EXPECT_EQ(std::memcmp(v.data, data, n), 0) << name;
    };
    check("q8", DType::Q8_0, {3, 64}, q8.data(), q8.size());
    check("q4", DType::Q4_0, {2, 32}, q4.data(), q4.size());
    check("bf", DType::BF16, {5, 7}, bf.data(), bf.size() * 2);
    check("f4d", DType::F32, {4, 3, 2, 5}, f32.data(), f32.size() * 4);
  }
}

TEST(GgufWriter, RejectsBadTensors) {
  GgufWriter w;
  float x[40] = {};
  EXPECT_THROW(w.add_tensor("q", 8, {2, 20}, x, 68), Error);      // row not a multiple of 32
  EXPECT_THROW(w.add_tensor("f", 0, {2, 5}, x, 36), Error);       // wrong byte count
  EXPECT_THROW(w.add_tensor("u", 99, {2}, x, 8), Error);          // unknown type
  EXPECT_THROW(w.add_tensor("d", 0, {1, 1, 1, 1, 2}, x, 8), Error);  // 5 dims
  w.add_tensor("ok", 0, {2}, x, 8);
  EXPECT_THROW(w.add_tensor("ok", 0, {2}, x, 8), Error);          // duplicate
}

// --- malformed files ---------------------------------------------------------------

TEST(GgufReader, MalformedFilesNameTheFileAndTheProblem) {
  TempDir dir;
  auto check = [&](const std::string& name, const Bytes& f, const std::string& problem) {
    const std::string path = dir.file(name);
    f.save(path);
    SCOPED_TRACE(name);
    expect_file_error(path, problem, [&] { GgufFile::open(path); });
  };

  {
    Bytes f = valid_file();
    f.b[0] = 'X';
    check("bad_magic.gguf", f, "bad magic");
  }
  {
    Bytes f = valid_file();
    f.b[4] = 99;
    check("version99.gguf", f, "unsupported GGUF version 99");
  }
  {
    Bytes f = valid_file();
    f.b[4] = 1;
    check("version1.gguf", f, "version 1 is not supported");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u32(1);  // tensor count cut in half
    check("truncated_header.gguf", f, "truncated file");
  }
  check("empty.gguf", Bytes{}, "not a GGUF file");
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).str("general.name").u32(8).u64(1000).zeros(10);
    check("truncated_string.gguf", f, "claims 1000 bytes");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).u64(uint64_t(1) << 62).zeros(16);
    check("absurd_key_length.gguf", f, "metadata key");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).str("tokens").u32(9).u32(8).u64(uint64_t(1) << 50).zeros(64);
    check("absurd_array.gguf", f, "more than the file can hold");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(uint64_t(1) << 40).zeros(64);
    check("absurd_kv_count.gguf", f, "metadata entries");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).str("x").u32(77).zeros(8);
    check("unknown_value_type.gguf", f, "unknown value type id 77");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).str("flag").u32(7).put<uint8_t>(2);
    check("bad_bool.gguf", f, "bool value 2");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(1).str("deep").u32(9);
    for (int i = 0; i < 20; ++i) f.u32(9).u64(1);
    f.zeros(64);
    check("deep_array.gguf", f, "nests arrays deeper");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(0).u64(2);
    f.str("general.name").u32(8).str("a");
    f.str("general.name").u32(8).str("b");
    check("repeated_key.gguf", f, "metadata key general.name appears twice");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(1).u64(16).u32(0).u64(64);  // 64 bytes at 64, only 100 bytes of data
    f.pad(32).zeros(100);
    check("data_past_eof.gguf", f, "runs past the end of the file");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(0).u64(0);
    f.pad(32).zeros(32);
    check("five_dims.gguf", f, "tensor w has 5 dimensions");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(1).u64(8).u32(99).u64(0);
    f.pad(32).zeros(64);
    check("unknown_type.gguf", f, "unknown tensor type id 99");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(1).u64(8).u32(0).u64(4);
    f.pad(32).zeros(64);
    check("misaligned.gguf", f, "not a multiple of the alignment");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(1).str("general.alignment").u32(4).u32(48);
    f.str("w").u32(1).u64(8).u32(0).u64(0);
    f.pad(64).zeros(64);
    check("bad_alignment.gguf", f, "general.alignment 48 is not a power of two");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(2).u64(0);
    f.str("w").u32(1).u64(8).u32(0).u64(0);
    f.str("w").u32(1).u64(8).u32(0).u64(32);
    f.pad(32).zeros(64);
    check("duplicate_tensor.gguf", f, "tensor w appears twice");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(2).u64(0);
    f.str("a").u32(1).u64(16).u32(0).u64(0);   // 64 bytes at 0
    f.str("b").u32(1).u64(8).u32(0).u64(32);   // 32 bytes at 32: inside a
    f.pad(32).zeros(64);
    check("overlap.gguf", f, "tensors a and b overlap");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(2).u64(uint64_t(1) << 20).u64(uint64_t(1) << 20).u32(0).u64(0);
    f.pad(32).zeros(64);
    check("huge_tensor.gguf", f, "larger than the file");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(2).u64(uint64_t(1) << 40).u64(uint64_t(1) << 40).u32(0).u64(0);
    f.pad(32).zeros(64);
    check("overflowing_dims.gguf", f, "absurd dimension");
  }
  {
    Bytes f;
    f.u32(kMagic).u32(3).u64(1).u64(0);
    f.str("w").u32(1).u64(40).u32(8).u64(0);  // Q8_0 row of 40
    f.pad(32).zeros(64);
    check("partial_block.gguf", f, "not a multiple of 32");
  }
}

TEST(GgufReader, UnsupportedTensorTypeIsNamed) {
  TempDir dir;
  Bytes f;
  f.u32(kMagic).u32(3).u64(1).u64(0);
  f.str("blk.0.ffn_down.weight").u32(2).u64(256).u64(2).u32(16).u64(0);  // IQ2_XXS
  f.pad(32).zeros(2 * 66);
  const std::string path = dir.file("iq2xxs.gguf");
  f.save(path);
  const GgufFile g = GgufFile::open(path);  // metadata stays readable
  ASSERT_EQ(g.tensors().size(), 1u);
  EXPECT_EQ(g.tensors()[0].nbytes, 132u);
  expect_file_error(path, "unsupported tensor type IQ2_XXS", [&] { g.view(g.tensors()[0]); });
}

// Every prefix and many random corruptions of a valid file must either parse or
// throw anybit::Error: never crash or read outside the mapping.
TEST(GgufReader, TruncationsAndCorruptionsNeverCrash) {
  TempDir dir;
  GgufWriter w;
  w.set("general.architecture", GgufValue::make_str("llama"));
  w.set("tokens", GgufValue::make_str_array({"a", "bc", "def"}));
  w.set("scores", GgufValue::make_f32_array({0.5f, 1.5f, 2.5f}));
  std::vector<float> data(64, 1.0f);
  w.add_tensor("x", 0, {4, 16}, data.data(), data.size() * 4);
  w.add_tensor("y", 0, {16}, data.data(), 64);
  const std::string good = dir.file("good.gguf");
  w.write(good);
  std::ifstream in(good, std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const GgufFile ref = GgufFile::open(good);
  const size_t data_end = ref.data_offset() + ref.tensors()[1].offset + ref.tensors()[1].nbytes;

  const std::string path = dir.file("cut.gguf");
  for (size_t n = 0; n < bytes.size(); ++n) {
    Bytes f;
    f.b.assign(bytes.begin(), bytes.begin() + long(n));
    f.save(path);
    if (n < data_end) {
      EXPECT_THROW(GgufFile::open(path), Error) << "prefix of " << n << " bytes";
    } else {
      EXPECT_NO_THROW(GgufFile::open(path)) << "prefix of " << n << " bytes (only padding cut)";
    }
  }
  std::mt19937 rng(99);
  int errors = 0;
  for (int trial = 0; trial < 200; ++trial) {
    Bytes f;
    f.b = bytes;
    const size_t header = ref.data_offset();
    for (int k = 0; k < 3; ++k) f.b[rng() % header] = uint8_t(rng());
    f.save(path);
    try {
      const GgufFile g = GgufFile::open(path);
      for (const auto& t : g.tensors()) {
        ASSERT_LE(g.data_offset() + t.offset + t.nbytes, f.b.size());
      }
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace anybit

// Argument helpers of the N-API glue, shared by the CPU addon (native/napi/addon.cc) and the CUDA addon
// (native/cuda/napi/addon.cc), which take their arguments the same way. Header-only. The error messages are part of
// the API (tests match them).
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace undo_napi {

[[noreturn]] inline void type_error(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }

template <typename A>
struct TypedArrayKind;
template <>
struct TypedArrayKind<Napi::Float32Array> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "a Float32Array";
};
template <>
struct TypedArrayKind<Napi::Int32Array> {
  static constexpr napi_typedarray_type type = napi_int32_array;
  static constexpr const char* name = "an Int32Array";
};

// Argument i as a typed array of at least min_len elements ("<what> must be a Float32Array", "<what> has n elements,
// needs m"); with nullable, null or undefined give an empty array (data() reads it as nullptr).
template <typename A>
A typed_arg(const Napi::CallbackInfo& info, size_t i, const char* what, size_t min_len, bool nullable) {
  Napi::Env env = info.Env();
  if (nullable && (info[i].IsNull() || info[i].IsUndefined())) return A();
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != TypedArrayKind<A>::type)
    type_error(env, std::string(what) + " must be " + TypedArrayKind<A>::name);
  auto a = info[i].As<A>();
  if (a.ElementLength() < min_len)
    type_error(env, std::string(what) + " has " + std::to_string(a.ElementLength()) + " elements, needs " +
                        std::to_string(min_len));
  return a;
}
inline Napi::Float32Array f32(const Napi::CallbackInfo& info, size_t i, const char* what, size_t min_len,
                              bool nullable = false) {
  return typed_arg<Napi::Float32Array>(info, i, what, min_len, nullable);
}
inline Napi::Int32Array i32(const Napi::CallbackInfo& info, size_t i, const char* what, size_t min_len,
                            bool nullable = false) {
  return typed_arg<Napi::Int32Array>(info, i, what, min_len, nullable);
}

inline float* data(Napi::Float32Array a) { return a.IsEmpty() ? nullptr : a.Data(); }
inline int32_t* data(Napi::Int32Array a) { return a.IsEmpty() ? nullptr : a.Data(); }

inline int64_t num(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) type_error(info.Env(), std::string(what) + " must be a number");
  return info[i].As<Napi::Number>().Int64Value();
}
inline double dbl(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) type_error(info.Env(), std::string(what) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}
inline bool flag(const Napi::CallbackInfo& info, size_t i) { return info[i].ToBoolean().Value(); }

// A number field of an options object: dflt when absent (null or undefined), unless required.
inline double field(Napi::Object o, const char* name, double dflt, bool required = false) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) throw Napi::TypeError::New(o.Env(), std::string("missing field ") + name);
    return dflt;
  }
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("field ") + name + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// A boolean field of an optional trailing options object (argument i); false when there is no object.
inline bool opt_flag(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsObject()) return false;
  return info[i].As<Napi::Object>().Get(name).ToBoolean().Value();
}

// A typed-array field `f` of options object `o` with exactly `len` elements of `type`: its data, or nullptr when it
// is absent and not required. Errors start with "<fn>: ". *bytes, when given, gets its byte length (0 when absent).
inline void* typed_field(Napi::Env env, Napi::Object o, const char* fn, const char* f, napi_typedarray_type type,
                         size_t len, bool required, size_t* bytes = nullptr) {
  const std::string pre = std::string(fn) + ": ";
  if (bytes) *bytes = 0;
  Napi::Value v = o.Get(f);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) type_error(env, pre + "missing " + f);
    return nullptr;
  }
  const char* tn = type == napi_float32_array ? "Float32Array" : type == napi_int32_array ? "Int32Array" : "Uint8Array";
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    type_error(env, pre + f + " must be a " + tn);
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  if (t.ElementLength() != len)
    type_error(env, pre + f + " has " + std::to_string(t.ElementLength()) + " elements, expected " +
                        std::to_string(len));
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, nullptr, nullptr, &data, nullptr, nullptr) != napi_ok)
    type_error(env, pre + "cannot read " + f);
  if (bytes) *bytes = t.ByteLength();
  return data;
}

}  // namespace undo_napi

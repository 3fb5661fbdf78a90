// The Python values torch checkpoints hold (None, bool, int, float, str, bytes, list, tuple,
// dict, OrderedDict, argparse.Namespace, tensors), a pickle protocol-2 writer for them, and a
// restricted reader that accepts exactly the opcodes and globals such files use and refuses
// anything else by name. It never executes code.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace moe::io {

struct PyValue;
using PyPtr = std::shared_ptr<PyValue>;

// A tensor inside a pickle: a view of a storage that lives in data/<key> of the archive.
struct TensorRef {
  std::string storage_key;
  DType dtype = DType::F32;
  int64_t storage_numel = 0;
  int64_t offset = 0;  // elements
  Shape shape;
  std::vector<int64_t> stride;
  std::string unsupported_storage;  // e.g. "torch.ByteStorage": readable as a value, not as a Tensor
};

// A contiguous, whole-storage TensorRef for tensor `t` stored under `key`.
TensorRef contiguous_ref(const std::string& key, DType dtype, const Shape& shape);
inline TensorRef contiguous_ref(const std::string& key, const Tensor& t) {
  return contiguous_ref(key, t.dtype(), t.shape());
}

struct PyValue {
  // kGlobal: a module-level name used as a value (`s` = "torch.bfloat16"). kObject: an instance
  // of an allowed class (`s` = its qualified name) built from `items` (the constructor's
  // arguments: cls.__new__(cls, *items) when `b`, else a call) and, when set, `state` (BUILD).
  enum Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kBytes,
    kList,
    kTuple,
    kDict,
    kOrderedDict,
    kNamespace,
    kTensor,
    kGlobal,
    kObject
  };
  Kind kind = kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                                 // str, bytes
  std::vector<PyPtr> items;                      // list, tuple
  std::vector<std::pair<PyPtr, PyPtr>> entries;  // dict, OrderedDict, Namespace (str keys), in order
  TensorRef tensor;
  PyPtr state;  // kObject: what BUILD set (a dict for dataclasses), or null

  static PyPtr none() { return std::make_shared<PyValue>(); }
  static PyPtr boolean(bool v) {
    auto p = std::make_shared<PyValue>();
    p->kind = kBool, p->b = v;
    return p;
  }
  static PyPtr integer(int64_t v) {
    auto p = std::make_shared<PyValue>();
    p->kind = kInt, p->i = v;
    return p;
  }
  static PyPtr floating(double v) {
    auto p = std::make_shared<PyValue>();
    p->kind = kFloat, p->f = v;
    return p;
  }
  static PyPtr str(std::string v) {
    auto p = std::make_shared<PyValue>();
    p->kind = kStr, p->s = std::move(v);
    return p;
  }
  static PyPtr container(Kind k) {
    auto p = std::make_shared<PyValue>();
    p->kind = k;
    return p;
  }
  static PyPtr tensor_ref(TensorRef t) {
    auto p = std::make_shared<PyValue>();
    p->kind = kTensor, p->tensor = std::move(t);
    return p;
  }

  static PyPtr global(std::string qualified) {
    auto p = std::make_shared<PyValue>();
    p->kind = kGlobal, p->s = std::move(qualified);
    return p;
  }
  // An object of class `qualified`: cls.__new__(cls, *args) then BUILD with `state` (dataclasses),
  // or, with new_object false, cls(*args) (torch.Size, enums).
  static PyPtr object(std::string qualified, std::vector<PyPtr> args, PyPtr state, bool new_object = true) {
    auto p = std::make_shared<PyValue>();
    p->kind = kObject, p->s = std::move(qualified), p->items = std::move(args), p->state = std::move(state);
    p->b = new_object;
    return p;
  }
  static PyPtr tuple(std::vector<PyPtr> xs) {
    auto p = container(kTuple);
    p->items = std::move(xs);
    return p;
  }
  static PyPtr bytes(std::string v) {
    auto p = container(kBytes);
    p->s = std::move(v);
    return p;
  }

  // Dict-like lookup by string key; nullptr if absent or not a dict-like value.
  PyPtr get(std::string_view key) const;
  // Appends key -> value to a dict-like value.
  void set(const std::string& key, PyPtr value) { entries.push_back({str(key), std::move(value)}); }
};

// Pickle protocol 2, as torch.save writes it (tensors via torch._utils._rebuild_tensor_v2 and
// persistent storage ids).
std::string pickle_dumps(const PyValue& root);

// InputError naming `where` for any opcode or global outside what checkpoints use, or for a
// malformed stream. `classes`: further globals (qualified names) allowed for this stream, each
// read as a kObject when called or instantiated, as a kGlobal otherwise (torch.distributed's
// checkpoint metadata classes, dtypes, torch.Size); nothing else is.
PyPtr pickle_loads(std::string_view data, const std::string& where, const std::vector<std::string>& classes = {});

}  // namespace moe::io

#include "io/pickle.h"

#include <cstring>
#include <map>

#include "core/error.h"

namespace moe::io {

TensorRef contiguous_ref(const std::string& key, DType dtype, const Shape& shape) {
  TensorRef r{key, dtype, shape_numel(shape), 0, shape, std::vector<int64_t>(shape.size(), 1)};
  for (size_t k = shape.size(); k-- > 1;) r.stride[k - 1] = r.stride[k] * shape[k];
  return r;
}

PyPtr PyValue::get(std::string_view key) const {
  for (const auto& [k, v] : entries)
    if (k && k->kind == kStr && k->s == key) return v;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

const char* storage_class(DType t) {
  switch (t) {
    case DType::F32: return "FloatStorage";
    case DType::BF16: return "BFloat16Storage";
    case DType::F16: return "HalfStorage";
  }
  return "?";
}

class Writer {
 public:
  std::string out = "\x80\x02";
  void value(const PyValue& v) {
    switch (v.kind) {
      case PyValue::kNone: out += 'N'; break;
      case PyValue::kBool: out += v.b ? '\x88' : '\x89'; break;
      case PyValue::kInt: integer(v.i); break;
      case PyValue::kFloat: {
        uint64_t u;
        std::memcpy(&u, &v.f, 8);
        out += 'G';
        for (int i = 7; i >= 0; --i) out += char((u >> (8 * i)) & 0xff);  // big-endian
        break;
      }
      case PyValue::kStr: str(v.s); break;
      case PyValue::kBytes: {
        out += 'B';  // BINBYTES
        for (int k = 0; k < 4; ++k) out += char((uint32_t(v.s.size()) >> (8 * k)) & 0xff);
        out += v.s;
        break;
      }
      case PyValue::kGlobal: qualified(v.s); break;
      case PyValue::kObject:
        qualified(v.s);
        tuple(v.items);
        out += v.b ? '\x81' : 'R';  // NEWOBJ: cls.__new__(cls, *args); REDUCE: cls(*args)
        if (v.state) value(*v.state), out += 'b';
        break;
      case PyValue::kList:
        out += ']';
        if (!v.items.empty()) {
          out += '(';
          for (const auto& x : v.items) value(*x);
          out += 'e';
        }
        break;
      case PyValue::kTuple: tuple(v.items); break;
      case PyValue::kDict:
        out += '}';
        items(v);
        break;
      case PyValue::kOrderedDict:
        global("collections", "OrderedDict"), out += ")R";
        items(v);
        break;
      case PyValue::kNamespace:
        global("argparse", "Namespace"), out += ")R}";
        items(v);
        out += 'b';  // BUILD: the dict becomes the object's attributes
        break;
      case PyValue::kTensor: tensor(v.tensor); break;
    }
  }

 private:
  void integer(int64_t i) {
    if (i >= 0 && i < 256) {
      out += 'K', out += char(i);
    } else if (i >= 0 && i < 65536) {
      out += 'M', out += char(i & 0xff), out += char(i >> 8);
    } else if (i >= INT32_MIN && i <= INT32_MAX) {
      out += 'J';
      for (int k = 0; k < 4; ++k) out += char((uint32_t(int32_t(i)) >> (8 * k)) & 0xff);
    } else {
      out += '\x8a', out += char(8);  // LONG1, 8 bytes two's complement
      for (int k = 0; k < 8; ++k) out += char((uint64_t(i) >> (8 * k)) & 0xff);
    }
  }
  void str(const std::string& s) {
    out += 'X';
    for (int k = 0; k < 4; ++k) out += char((uint32_t(s.size()) >> (8 * k)) & 0xff);
    out += s;
  }
  void global(const char* module, const char* name) { out += std::string("c") + module + "\n" + name + "\n"; }
  void qualified(const std::string& q) {
    const size_t dot = q.rfind('.');
    MOE_ASSERT(dot != std::string::npos, "global '{}' has no module", q);
    global(q.substr(0, dot).c_str(), q.substr(dot + 1).c_str());
  }
  void tuple(const std::vector<PyPtr>& items) {
    if (items.empty()) {
      out += ')';
      return;
    }
    if (items.size() > 3) out += '(';
    for (const auto& x : items) value(*x);
    out += items.size() == 1 ? "\x85" : items.size() == 2 ? "\x86" : items.size() == 3 ? "\x87" : "t";
  }
  void items(const PyValue& v) {
    if (v.entries.empty()) return;
    out += '(';
    for (const auto& [k, x] : v.entries) value(*k), value(*x);
    out += 'u';
  }
  void int_tuple(const std::vector<int64_t>& xs) {
    std::vector<PyPtr> items;
    items.reserve(xs.size());
    for (int64_t x : xs) items.push_back(PyValue::integer(x));
    tuple(items);
  }
  void tensor(const TensorRef& t) {
    global("torch._utils", "_rebuild_tensor_v2");
    out += '(';
    out += '(';  // persistent id: ('storage', <storage class>, key, 'cpu', numel)
    str("storage");
    if (t.unsupported_storage.empty()) global("torch", storage_class(t.dtype));
    else qualified(t.unsupported_storage);  // e.g. torch.ByteStorage of TE's empty uint8 extra state
    str(t.storage_key), str("cpu"), integer(t.storage_numel);
    out += "tQ";
    integer(t.offset);
    int_tuple(std::vector<int64_t>(t.shape.begin(), t.shape.end()));
    int_tuple(t.stride);
    out += '\x89';                                      // requires_grad False
    global("collections", "OrderedDict"), out += ")R";  // backward hooks
    out += "tR";
  }
};

}  // namespace

std::string pickle_dumps(const PyValue& root) {
  Writer w;
  w.value(root);
  w.out += '.';
  return w.out;
}

// ---------------------------------------------------------------------------------------------
// Restricted reader

namespace {

// Markers on the stack that are not Python values: a global (callable) and a MARK.
struct Item {
  PyPtr v;
  std::string global;  // "module.name" when this item is a global
  bool mark = false;
};

bool storage_dtype(const std::string& cls, DType* dt) {
  if (cls == "torch.FloatStorage") *dt = DType::F32;
  else if (cls == "torch.BFloat16Storage") *dt = DType::BF16;
  else if (cls == "torch.HalfStorage") *dt = DType::F16;
  else return false;
  return true;
}

class Reader {
 public:
  Reader(std::string_view d, const std::string& where, const std::vector<std::string>& classes)
      : d_(d), where_(where), classes_(classes) {}

  PyPtr run() {
    while (true) {
      const unsigned char op = byte();
      switch (op) {
        case 0x80: byte(); break;   // PROTO
        case 0x95: take(8); break;  // FRAME
        case '.': return pop_value("STOP");
        case '(': stack_.push_back({nullptr, "", true}); break;
        case 'N': push(PyValue::none()); break;
        case 0x88: push(PyValue::boolean(true)); break;
        case 0x89: push(PyValue::boolean(false)); break;
        case 'K': push(PyValue::integer(byte())); break;
        case 'M': push(PyValue::integer(int64_t(le(2)))); break;
        case 'J': push(PyValue::integer(int64_t(int32_t(uint32_t(le(4)))))); break;
        case 0x8a: {  // LONG1
          const int n = byte();
          if (n > 8) fail("integer wider than 64 bits");
          uint64_t u = le(n);
          if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~uint64_t(0) << (8 * n);  // sign-extend
          push(PyValue::integer(int64_t(u)));
          break;
        }
        case 'G': {
          uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = (u << 8) | byte();
          double f;
          std::memcpy(&f, &u, 8);
          push(PyValue::floating(f));
          break;
        }
        case 'X': push(PyValue::str(std::string(take(le(4))))); break;
        case 0x8c: push(PyValue::str(std::string(take(byte())))); break;
        case 0x8d: push(PyValue::str(std::string(take(le(8))))); break;
        case 'C':
        case 'B':
        case 0x8e: {  // SHORT_BINBYTES, BINBYTES, BINBYTES8
          auto p = PyValue::container(PyValue::kBytes);
          p->s = std::string(take(op == 'C' ? byte() : op == 'B' ? le(4) : le(8)));
          push(p);
          break;
        }
        case ']': push(PyValue::container(PyValue::kList)); break;
        case '}': push(PyValue::container(PyValue::kDict)); break;
        case ')': push(PyValue::container(PyValue::kTuple)); break;
        case 'l':
        case 't':
        case 'd': {
          auto items = pop_mark();
          auto p = PyValue::container(op == 'l' ? PyValue::kList : op == 't' ? PyValue::kTuple : PyValue::kDict);
          if (op == 'd') {
            if (items.size() % 2) fail("DICT with an odd number of items");
            for (size_t i = 0; i < items.size(); i += 2) p->entries.push_back({items[i], items[i + 1]});
          } else {
            p->items = std::move(items);
          }
          push(p);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
          const size_t n = op - 0x84;
          auto p = PyValue::container(PyValue::kTuple);
          p->items.resize(n);
          for (size_t i = n; i-- > 0;) p->items[i] = pop_value("TUPLE");
          push(p);
          break;
        }
        case 'a': {
          auto x = pop_value("APPEND");
          list_top()->items.push_back(x);
          break;
        }
        case 'e': {
          auto xs = pop_mark();
          auto& l = list_top()->items;
          l.insert(l.end(), xs.begin(), xs.end());
          break;
        }
        case 's': {
          auto v = pop_value("SETITEM"), k = pop_value("SETITEM");
          dict_top()->entries.push_back({k, v});
          break;
        }
        case 'u': {
          auto xs = pop_mark();
          if (xs.size() % 2) fail("SETITEMS with an odd number of items");
          auto d = dict_top();
          for (size_t i = 0; i < xs.size(); i += 2) d->entries.push_back({xs[i], xs[i + 1]});
          break;
        }
        case 'c': {
          std::string qualified = line();  // module, then the name on the next line
          qualified += '.';
          qualified += line();
          global(qualified);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop_value("STACK_GLOBAL"), module = pop_value("STACK_GLOBAL");
          if (module->kind != PyValue::kStr || name->kind != PyValue::kStr) fail("STACK_GLOBAL needs two strings");
          global(module->s + "." + name->s);
          break;
        }
        case 'R':
        case 0x81: {  // REDUCE, NEWOBJ
          auto args = pop_value("REDUCE");
          if (stack_.empty() || stack_.back().global.empty()) fail("REDUCE of something that is not an allowed global");
          const std::string fn = stack_.back().global;
          stack_.pop_back();
          push(call(fn, *args));
          break;
        }
        case 'b': {  // BUILD
          auto state = pop_value("BUILD");
          auto obj = top("BUILD");
          if (obj->kind == PyValue::kObject) {
            obj->state = state;
          } else if (obj->kind == PyValue::kNamespace && state->kind == PyValue::kDict) {
            obj->entries = state->entries;
          } else if (obj->kind == PyValue::kBytes && state->kind == PyValue::kTuple && !state->items.empty() &&
                     state->items[0]->kind == PyValue::kBytes) {  // BytesIO state: (value, position, dict)
            obj->s = state->items[0]->s;
          } else if (state->kind != PyValue::kNone && !(obj->kind == PyValue::kTensor)) {
            fail("BUILD on an object that takes no state");
          }
          break;
        }
        case 'Q': {  // BINPERSID: ('storage', cls, key, location, numel)
          auto pid = pop_value("BINPERSID");
          if (pid->kind != PyValue::kTuple || pid->items.size() != 5 || pid->items[0]->s != "storage")
            fail("persistent id is not a ('storage', ...) tuple");
          TensorRef t;
          if (!storage_dtype(pid->items[1]->s, &t.dtype)) t.unsupported_storage = pid->items[1]->s;
          t.storage_key = pid->items[2]->s;
          t.storage_numel = pid->items[4]->i;
          push(PyValue::tensor_ref(t));
          break;
        }
        case 'q': memoize(byte()); break;
        case 'r': memoize(uint32_t(le(4))); break;
        case 0x94: memoize(uint32_t(memo_.size())); break;
        case 'h':
        case 'j': {
          const uint32_t k = op == 'h' ? byte() : uint32_t(le(4));
          auto it = memo_.find(k);
          if (it == memo_.end()) fail("memo key " + std::to_string(k) + " was never stored");
          stack_.push_back(it->second);
          break;
        }
        case '0': pop_value("POP"); break;
        case '1': pop_mark(); break;
        default: fail(fmt::format("pickle opcode 0x{:02x} is not allowed in a checkpoint", op));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw_input("{}: {} (at byte {}; the file is corrupt or not a tensor checkpoint)", where_, what, pos_);
  }
  unsigned char byte() {
    if (pos_ >= d_.size()) fail("pickle stream ends early");
    return static_cast<unsigned char>(d_[pos_++]);
  }
  uint64_t le(int n) {
    uint64_t u = 0;
    for (int i = 0; i < n; ++i) u |= uint64_t(byte()) << (8 * i);
    return u;
  }
  std::string_view take(uint64_t n) {
    if (n > d_.size() - pos_) fail("pickle stream ends early");
    auto s = d_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string line() {
    const size_t e = d_.find('\n', pos_);
    if (e == std::string_view::npos) fail("unterminated GLOBAL");
    std::string s(d_.substr(pos_, e - pos_));
    pos_ = e + 1;
    return s;
  }
  void push(PyPtr v) { stack_.push_back({std::move(v), "", false}); }
  void memoize(uint32_t key) {
    if (stack_.empty() || stack_.back().mark) fail("memo store with nothing on the stack");
    memo_[key] = stack_.back();
  }
  void global(const std::string& name) {
    // Storage classes of every dtype are allowed: a checkpoint may hold e.g. TransformerEngine's
    // empty uint8 `_extra_state` tensors next to the weights; only F32/BF16/F16 become Tensors.
    static const char* allowed[] = {"collections.OrderedDict",
                                    "torch._utils._rebuild_tensor_v2",
                                    "argparse.Namespace",
                                    "_codecs.encode",
                                    "torch.FloatStorage",
                                    "torch.BFloat16Storage",
                                    "torch.HalfStorage",
                                    "torch.DoubleStorage",
                                    "torch.ByteStorage",
                                    "torch.CharStorage",
                                    "torch.ShortStorage",
                                    "torch.IntStorage",
                                    "torch.LongStorage",
                                    "torch.BoolStorage",
                                    "_io.BytesIO",
                                    "__builtin__.bytes",
                                    "builtins.bytes"};
    for (const char* a : allowed)
      if (name == a) {
        Item it{PyValue::str(name), name, false};
        stack_.push_back(it);
        return;
      }
    for (const auto& a : classes_)
      if (name == a) {
        stack_.push_back({PyValue::global(name), name, false});
        return;
      }
    fail("global '" + name + "' is not allowed in a checkpoint");
  }
  PyPtr call(const std::string& fn, const PyValue& args) {
    if (args.kind != PyValue::kTuple) fail("call of " + fn + " without an argument tuple");
    const auto& a = args.items;
    for (const auto& c : classes_)
      if (fn == c) return PyValue::object(fn, a, nullptr);
    if (fn == "collections.OrderedDict" && a.empty()) return PyValue::container(PyValue::kOrderedDict);
    if (fn == "argparse.Namespace" && a.empty()) return PyValue::container(PyValue::kNamespace);
    // TransformerEngine 1.x extra state: BytesIO(bytes) (its content arrives by BUILD).
    if (fn == "_io.BytesIO" && a.size() == 1 && a[0]->kind == PyValue::kBytes) return a[0];
    if ((fn == "_io.BytesIO" || fn == "__builtin__.bytes" || fn == "builtins.bytes") && a.empty())
      return PyValue::container(PyValue::kBytes);
    if (fn == "_codecs.encode" && a.size() == 2 && a[0]->kind == PyValue::kStr) {
      auto b = PyValue::container(PyValue::kBytes);  // latin-1: each code point is one byte
      const std::string& s = a[0]->s;
      for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) b->s += char(c);
        else if ((c & 0xe0) == 0xc0 && i + 1 < s.size()) b->s += char(((c & 0x1f) << 6) | (s[++i] & 0x3f));
        else fail("_codecs.encode of a character outside latin-1");
      }
      return b;
    }
    if (fn == "torch._utils._rebuild_tensor_v2" && a.size() >= 4 && a[0]->kind == PyValue::kTensor) {
      TensorRef t = a[0]->tensor;
      if (a[1]->kind != PyValue::kInt || a[2]->kind != PyValue::kTuple || a[3]->kind != PyValue::kTuple)
        fail("malformed _rebuild_tensor_v2 arguments");
      t.offset = a[1]->i;
      for (const auto& x : a[2]->items) t.shape.push_back(x->i);
      for (const auto& x : a[3]->items) t.stride.push_back(x->i);
      return PyValue::tensor_ref(t);
    }
    fail("call of " + fn + " with unexpected arguments");
  }
  PyPtr top(const char* op) {
    if (stack_.empty() || stack_.back().mark || !stack_.back().v) fail(std::string(op) + " on an empty stack");
    return stack_.back().v;
  }
  PyPtr pop_value(const char* op) {
    auto v = top(op);  // a global used as a value (e.g. a storage class) is its dotted name
    stack_.pop_back();
    return v;
  }
  std::vector<PyPtr> pop_mark() {
    std::vector<PyPtr> xs;
    while (!stack_.empty() && !stack_.back().mark) {
      xs.push_back(stack_.back().v);
      stack_.pop_back();
    }
    if (stack_.empty()) fail("no MARK on the stack");
    stack_.pop_back();
    return {xs.rbegin(), xs.rend()};
  }
  PyPtr list_top() {
    auto l = top("APPEND");
    if (l->kind != PyValue::kList) fail("APPEND to something that is not a list");
    return l;
  }
  PyPtr dict_top() {
    auto d = top("SETITEM");
    if (d->kind != PyValue::kDict && d->kind != PyValue::kOrderedDict) fail("SETITEM on something that is not a dict");
    return d;
  }

  std::string_view d_;
  std::string where_;
  const std::vector<std::string>& classes_;
  size_t pos_ = 0;
  std::vector<Item> stack_;
  std::map<uint32_t, Item> memo_;
};

}  // namespace

PyPtr pickle_loads(std::string_view data, const std::string& where, const std::vector<std::string>& classes) {
  return Reader(data, where, classes).run();
}

}  // namespace moe::io

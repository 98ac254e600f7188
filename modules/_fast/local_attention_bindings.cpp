// Python bindings of the local attention extension (functions in local_attention.h).
#include "local_attention.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "local attention forward: (out, softmax weights if save_weights)");
  m.def("backward", &backward, "local attention backward: (dq, dkd, dvd)");
  m.def("pad_split", &pad_split, "reflection pad + phase split of a channel range: (B, C, Hp, S, Wq)");
  m.def("backward_fold", &backward_fold, "backward adding the key/value gradients, reflection folded, into dst: dq");
  m.def("lanes_forward", &lanes_forward, "small-map forward, (b, n) planes in the lanes: (B, C, H', W')");
  m.def("lanes_backward_fold", &lanes_backward_fold, "small-map backward, k/v gradients folded into dst: dq");
}

"""Circuit-tracing transcoders: per-layer transcoder sets (PLTs) and cross-layer transcoders (CLTs).

- `TranscoderSet`: one saekit transcoder per layer (MLP input → MLP output), trained as a sweep from one
  model forward (`transcoder_set_specs`), saved as one folder, loaded as one object.
- `CrossLayerTranscoder` (+ `CLTConfig`, `CLTSpec`): one encoder per layer, decoders from each layer into
  every later one, trained by the same trainer (`saekit.train(stream, [..., CLTSpec(...)])`).
- Both expose the same per-layer reading surface (`layers`, `encoder`, `threshold_of`, `decoder`,
  `decoder_bias`, `skip`, `encode_layer`, `decode_layer`), which spliced evaluation
  (`saekit.circuits.replacement`) and the replacement model of attribution graphs read.
- Attribution graphs (issue 16): `attribute(model, tokenizer, transcoders, prompt)` → `AttributionGraph`
  (scores, pruning, save/load); `intervene` and `check_graph` test a graph in the real model.
"""

from saekit.circuits.attribution import attribute
from saekit.circuits.clt import CLTConfig, CLTProvenance, CrossLayerTranscoder
from saekit.circuits.clt_training import CLTSpec, CLTTrainingConfig
from saekit.circuits.graph import AttributionGraph
from saekit.circuits.interventions import check_graph, intervene
from saekit.circuits.layers import mlp_layer_count, parse_layers

__all__ = ["AttributionGraph", "CLTConfig", "CLTProvenance", "CLTSpec", "CLTTrainingConfig", "CrossLayerTranscoder",
           "attribute", "check_graph", "intervene", "mlp_layer_count", "parse_layers"]

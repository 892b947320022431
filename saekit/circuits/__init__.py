"""Circuit-tracing transcoders: per-layer transcoder sets (PLTs) and cross-layer transcoders (CLTs).

- `TranscoderSet`: one saekit transcoder per layer (MLP input → MLP output), trained as a sweep from one
  model forward (`transcoder_set_specs`), saved as one folder, loaded as one object.
- `CrossLayerTranscoder` (+ `CLTConfig`, `CLTSpec`): one encoder per layer, decoders from each layer into
  every later one, trained by the same trainer (`saekit.train(stream, [..., CLTSpec(...)])`).
- Both expose the same per-layer reading surface (`layers`, `encoder`, `threshold_of`, `decoder`,
  `decoder_bias`, `skip`, `encode_layer`, `decode_layer`), which spliced evaluation
  (`saekit.circuits.replacement`) and the replacement model of attribution graphs read.
"""

from saekit.circuits.clt import CLTConfig, CLTProvenance, CrossLayerTranscoder
from saekit.circuits.clt_training import CLTSpec, CLTTrainingConfig
from saekit.circuits.layers import mlp_layer_count, parse_layers

__all__ = ["CLTConfig", "CLTProvenance", "CLTSpec", "CLTTrainingConfig", "CrossLayerTranscoder",
           "mlp_layer_count", "parse_layers"]

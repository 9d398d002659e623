"""Speech recognition with GQ: data, features, RNN-T and Conformer models, loss,
decoding, training recipes, streaming deployment and the experiment table."""

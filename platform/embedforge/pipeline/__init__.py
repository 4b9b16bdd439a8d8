"""The whole pipeline as one resumable job: prepare -> synthesize -> mine -> train stage 1 ->
train stage 2 -> evaluate (gate) -> serve, each stage reading the previous one's folder."""

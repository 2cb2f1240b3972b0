"""Self-fine-tuning after Taubenfeld et al. (2024), section 5 and appendix A.2.

``questions`` builds the interview questions (the paper's ten seeds plus model-written ones),
``answers`` has a partisan agent answer them into a JSONL dataset for SFT and DPO. Training
itself lives in modules that import torch/trl lazily, so importing this package stays cheap.
"""
